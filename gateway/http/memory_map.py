"""The memory map the web page draws: one bar per GPU and one for host memory, in bytes.

One shape for the live map (``live_map``: the models running now) and the plan preview's
(``plan_map``: what a models.toml would produce), so the page has one renderer:

- ``gpus``: ``index``, ``name``, ``total_bytes``; ``free_bytes`` (NVML's free memory now, or for
  a declared inventory the declared free memory less what this gateway's models were planned
  to use); ``other_bytes`` (in use, but not by this gateway's models); ``reserve_bytes`` (kept
  free by ``[planner] reserve_mib``); ``note`` (why the planner does not use it, or null).
- ``host``: ``total_bytes``, ``free_bytes``, ``other_bytes``, or null where it cannot be read.
- ``blocks``: one per model and device (``gpu`` is the GPU index, null for host memory):
  the planned bytes and their parts (weights, KV cache, compute buffers, CUDA context and
  growth, as ``ModelLaunch.planned_json`` has them), and over them what llama.cpp reported
  allocating (``allocated_bytes``) and what NVML says the process uses (``process_bytes``),
  each null where unknown.
- ``shortfalls`` (the plan preview's only): one per model that does not fit for want of memory,
  where it came closest (``planner.plan.Shortfall``): on ``gpu`` it needs ``need_bytes`` where
  ``room_bytes`` were left, short by ``short_bytes``; ``gpu`` null: over its ``max_vram_mib``
  (``room_bytes`` is the cap). The page draws each past the room left on its GPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.config.schema import Config
from planner.llama_log import llama_buffers_per_gpu, llama_host_buffers
from gateway.placement.host_memory import HostMemory
from gateway.placement.launch import ModelLaunch
from planner.devices import Device
from planner.plan import Plan, Shortfall
from planner.units import MIB


@dataclass(frozen=True)
class HeldModel:
    """A model that holds (or is about to hold) memory: what it was planned and what it uses."""

    name: str
    state: str
    planned: Mapping[str, Any]  # ModelLaunch.planned_json()
    allocated: Mapping[str, Any] = field(default_factory=dict)  # the worker's buffer report
    process_used: Mapping[str, int] = field(default_factory=dict)  # NVML, by GPU index (str)


def _blocks(model: HeldModel) -> list[dict[str, Any]]:
    devices = list(model.planned.get("devices") or [])
    allocated = llama_buffers_per_gpu(model.allocated, [d["gpu"] for d in devices]) if model.allocated else {}
    out = []
    for d in devices:
        used = model.process_used.get(str(d["gpu"]))
        out.append(
            {
                "model": model.name,
                "state": model.state,
                "gpu": d["gpu"],
                "layers": d["layers"],
                "planned_bytes": d["total_bytes"],
                "weights_bytes": d["weights_bytes"],
                "kv_bytes": d["kv_bytes"],
                "compute_bytes": d["compute_bytes"],
                "overhead_bytes": d["overhead_bytes"],
                "allocated_bytes": allocated.get(d["gpu"]),
                "process_bytes": int(used) if used is not None else None,
            }
        )
    host = int(model.planned.get("host_bytes") or 0)
    if host:
        out.append(
            {
                "model": model.name,
                "state": model.state,
                "gpu": None,
                "layers": None,
                "planned_bytes": host,
                "weights_bytes": None,
                "kv_bytes": None,
                "compute_bytes": None,
                "overhead_bytes": None,
                "allocated_bytes": llama_host_buffers(model.allocated) if model.allocated else None,
                "process_bytes": None,
            }
        )
    return out


def _gpu(device: Device, *, free: int, other: int, reserve: int, note: str | None = None) -> dict[str, Any]:
    return {
        "index": device.index,
        "name": device.name,
        "total_bytes": device.total_bytes,
        "free_bytes": max(0, free),
        "other_bytes": max(0, other),
        "reserve_bytes": min(reserve, device.total_bytes),
        "note": note,
    }


def _host(host: HostMemory | None, blocks: Iterable[dict[str, Any]], *, held: bool) -> dict[str, Any] | None:
    if host is None:
        return None
    planned = sum(b["planned_bytes"] for b in blocks if b["gpu"] is None)
    in_use = host.total_bytes - host.available_bytes
    return {
        "total_bytes": host.total_bytes,
        # Held: the models' host memory is part of what is in use now. Preview: it comes on top.
        "free_bytes": max(0, host.available_bytes if held else host.available_bytes - planned),
        "other_bytes": max(0, in_use - planned if held else in_use),
    }


def _excluded(config: Config, index: int) -> str | None:
    allowed = config.planner.devices
    return None if allowed is None or index in allowed else "not in [planner] devices"


def live_map(config: Config, devices: Sequence[Device], host: HostMemory | None, held: Sequence[HeldModel]) -> dict[str, Any]:
    """The machine now: every GPU of the inventory, and the models holding memory on it."""
    blocks = [b for m in held for b in _blocks(m)]
    reserve = config.planner.reserve_mib * MIB
    declared = config.planner.gpus is not None
    gpus = []
    for d in devices:
        mine = [b for b in blocks if b["gpu"] == d.index]
        planned = sum(b["planned_bytes"] for b in mine)
        if declared:
            # A declared inventory is static: its free memory is what the models may take.
            free, other = d.free_bytes - planned, d.total_bytes - d.free_bytes
        else:
            measured = sum(b["process_bytes"] if b["process_bytes"] is not None else b["planned_bytes"] for b in mine)
            free, other = d.free_bytes, d.total_bytes - d.free_bytes - measured
        gpus.append(_gpu(d, free=free, other=other, reserve=reserve, note=_excluded(config, d.index)))
    return {"gpus": gpus, "host": _host(host, blocks, held=True), "blocks": blocks}


def plan_map(config: Config, plan: Plan, launches: Mapping[str, ModelLaunch], host: HostMemory | None) -> dict[str, Any]:
    """What a plan would put where, on the inventory it was planned against."""
    blocks = [b for p in plan.placements for b in _blocks(HeldModel(p.name, "planned", launches[p.name].planned_json()))]
    reserve = config.planner.reserve_mib * MIB
    gpus = []
    for u in plan.gpus:
        d = u.device
        planned = sum(b["planned_bytes"] for b in blocks if b["gpu"] == d.index)
        gpus.append(_gpu(d, free=d.free_bytes - planned, other=d.total_bytes - d.free_bytes, reserve=reserve))
    for s in plan.skipped:
        d = s.device
        gpus.append(_gpu(d, free=d.free_bytes, other=d.total_bytes - d.free_bytes, reserve=reserve, note=s.reason))
    gpus.sort(key=lambda g: g["index"])
    return {
        "gpus": gpus,
        "host": _host(host, blocks, held=False),
        "blocks": blocks,
        "shortfalls": [shortfall_json(s) for s in plan.shortfalls],
    }


def shortfall_json(short: Shortfall) -> dict[str, Any]:
    return {
        "model": short.model,
        "gpu": short.gpu,
        "short_bytes": short.short_bytes,
        "need_bytes": short.need_bytes,
        "room_bytes": short.room_bytes,
        "placed_layers": short.placed_layers,
        "gpu_layers": short.gpu_layers,
        "tried_gpus": list(short.tried_gpus),
    }


def held_model(name: str, state: str, launch: ModelLaunch, allocated: Mapping[str, Any], process_used: Mapping[str, int]) -> HeldModel:
    return HeldModel(name, state, launch.planned_json(), dict(allocated), {str(k): int(v) for k, v in process_used.items()})
