"""Text, JSON and TOML views of model analyses and plans, for the CLI."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.runtime.states import ModelState
from planner.devices import Device
from planner.llama_log import llama_host_buffers
from planner.model_info import ModelInfo
from planner.plan import Placement, Plan
from planner.split import format_tensor_split
from planner.units import MIB

BAR_WIDTH = 40


def _mib(b: float) -> str:
    return f"{b / MIB:,.0f}"


def analysis_text(path: str, info: ModelInfo) -> str:
    """The PoC's model analysis block (docs/poc-reference.md#commands)."""
    sizes = info.layer_bytes
    lines = [
        f"[Model Analysis] {path}",
        f"  Architecture: {info.architecture}" + (f" ({info.name})" if info.name else ""),
        f"  Total size: {info.total_bytes / 1e9:.2f} GB ({info.total_bytes / MIB:,.2f} MiB)",
        f"  Layers: {info.n_layers}",
    ]
    if sizes:
        lines += [
            f"  Avg layer size: {sum(sizes) / len(sizes) / MIB:.2f} MiB",
            f"  Layer size range: {min(sizes) / MIB:.2f} - {max(sizes) / MIB:.2f} MiB",
        ]
    out_desc = (
        f"{info.output_bytes / MIB:.2f} MiB"
        if info.output_bytes is not None
        else f"tied to token_embd ({info.token_embd_bytes / MIB:.2f} MiB copy on its device)"
    )
    lines += [
        f"  token_embd: {info.token_embd_bytes / MIB:.2f} MiB (stays in host memory)",
        f"  output: {out_desc}",
        f"  Context (train): {info.context_length:,}; KV heads: {max(info.n_head_kv, default=0)}; "
        f"head dims: {info.key_length}/{info.value_length}"
        + (f"; sliding window {info.sliding_window} on {sum(info.swa_layers)} of {info.n_layers} layers" if info.sliding_window else ""),
    ]
    return "\n".join(lines)


def analysis_json(info: ModelInfo) -> dict:
    return {
        "paths": list(info.paths),
        "architecture": info.architecture,
        "name": info.name,
        "n_layers": info.n_layers,
        "total_bytes": info.total_bytes,
        "file_bytes": info.file_bytes,
        "layers": [{"index": i, "bytes": b} for i, b in enumerate(info.layer_bytes)],
        "token_embd_bytes": info.token_embd_bytes,
        "output_bytes": info.output_bytes,
        "output_norm_bytes": info.output_norm_bytes,
        "tied_embeddings": info.output_bytes is None,
        "n_embd": info.n_embd,
        "n_head": info.n_head,
        "n_head_kv": list(info.n_head_kv),
        "key_length": info.key_length,
        "value_length": info.value_length,
        "n_vocab": info.n_vocab,
        "context_length": info.context_length,
        "sliding_window": info.sliding_window,
        "swa_layers": [i for i, s in enumerate(info.swa_layers) if s],
    }


def gpus_text(plan: Plan, devices: Sequence[Device]) -> str:
    if not devices:
        return "[vram-llm] No NVIDIA GPU found: every model runs on the CPU."
    lines = ["[vram-llm] GPUs in device order (GPU n = NVML/PCI index, as in CUDA_VISIBLE_DEVICES):"]
    for u in plan.gpus:
        d = u.device
        lines.append(
            f"  GPU {d.index}: {d.name} - {_mib(d.free_bytes)} / {_mib(d.total_bytes)} MiB free, "
            f"{_mib(u.budget_bytes)} MiB usable"
        )
    for s in plan.skipped:
        lines.append(f"  GPU {s.device.index}: {s.device.name} - skipped: {s.reason}")
    return "\n".join(lines)


def _layer_ranges(p: Placement, n_layers: int) -> list[str]:
    """Layer index ranges per GPU ('#26-72'); the output layer is shown as 'out'."""
    start = n_layers + 1 - sum(p.layer_counts)
    out = []
    for c in p.layer_counts:
        end = start + c - 1
        label = f"#{start}-{min(end, n_layers - 1)}" if start <= n_layers - 1 else ""
        if end == n_layers:
            label = (label + "+out") if label else "out"
        out.append(label)
        start = end + 1
    return out


def slots_text(p: Placement) -> str | None:
    """What a model's concurrent requests cost: the weights once, and KV per slot or one pool."""
    s = p.settings
    if s.slots == 1:
        return None
    weights = sum(d.weights_bytes for d in p.memory.devices) + p.memory.host.mapped_bytes + p.memory.host.repack_bytes
    kv = sum(d.kv_bytes for d in p.memory.devices) + p.memory.host.kv_bytes
    head = f"  slots: {s.slots} requests at once in one context: weights once ({_mib(weights)} MiB), KV {_mib(kv)} MiB"
    if s.kv_unified:
        return head + f" in one pool of {s.kv_cells:,} tokens that they share (kv_unified; each up to n_ctx {s.n_ctx:,})"
    return head + f" = {s.slots} x {_mib(kv / s.slots)} MiB (n_ctx {s.n_ctx:,} each)"


def plan_text(plan: Plan, infos: dict[str, ModelInfo]) -> str:
    """Per-GPU usage bars, then each model's split."""
    width = 70
    lines = ["=" * width, "LAYER-TO-GPU ALLOCATION PLAN", "=" * width]
    for u in plan.gpus:
        used = plan.used_bytes(u.index)
        total_used = sum(b for _, b in used)
        frac = total_used / u.budget_bytes if u.budget_bytes else 0.0
        filled = min(BAR_WIDTH, round(frac * BAR_WIDTH))
        lines.append(
            f"  GPU {u.index} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
            f"{_mib(total_used)} / {_mib(u.budget_bytes)} MiB ({frac:.1%})"
        )
        for name, b in used:
            lines.append(f"      {name:<24} {_mib(b):>9} MiB")
    for p in plan.placements:
        info = infos[p.name]
        lines.append("")
        lines.append(f"model {p.name}: n_gpu_layers = {p.n_gpu_layers}, CUDA_VISIBLE_DEVICES = {p.cuda_visible_devices!r}")
        slots = slots_text(p)
        if slots is not None:
            lines.append(slots)
        ranges = _layer_ranges(p, info.n_layers)
        for slot, (gpu, mem) in enumerate(zip(p.gpus, p.memory.devices)):
            lines.append(
                f"  GPU {gpu}: {p.layer_counts[slot]:3d} layers ({ranges[slot]}) | weights {_mib(mem.weights_bytes)} + "
                f"KV {_mib(mem.kv_bytes)} + compute {_mib(mem.compute_bytes)} + CUDA {_mib(mem.overhead_bytes + mem.growth_bytes)} "
                f"= {_mib(mem.total_bytes)} MiB"
            )
        h = p.memory.host
        lines.append(
            f"  host: weights {_mib(h.mapped_bytes)} + repacked {_mib(h.repack_bytes)} + KV {_mib(h.kv_bytes)} + "
            f"compute {_mib(h.compute_bytes)} = {_mib(h.total_bytes)} MiB"
        )
        if p.tensor_split is not None:
            lines.append(f'  TENSOR SPLIT: --tensor-split "{format_tensor_split(p.tensor_split)}"')
        elif p.gpus:
            lines.append("  TENSOR SPLIT: not needed (one GPU)")
        for note in p.notes:
            lines.append(f"  note: {note}")
    if plan.problems:
        lines.append("")
        lines.append("DOES NOT FIT:")
        lines += [f"  {p}" for p in plan.problems]
    return "\n".join(lines)


def plan_json(plan: Plan) -> dict:
    return {
        "fits": plan.fits,
        "gpus": [
            {
                "index": u.index,
                "uuid": u.device.uuid,
                "name": u.device.name,
                "total_bytes": u.device.total_bytes,
                "free_bytes": u.device.free_bytes,
                "budget_bytes": u.budget_bytes,
                "planned_bytes": sum(b for _, b in plan.used_bytes(u.index)),
            }
            for u in plan.gpus
        ],
        "skipped_gpus": [{"index": s.device.index, "name": s.device.name, "reason": s.reason} for s in plan.skipped],
        "models": [
            {
                "name": p.name,
                "devices": [
                    {
                        "gpu": gpu,
                        "layers": p.layer_counts[slot],
                        "weights_bytes": mem.weights_bytes,
                        "kv_bytes": mem.kv_bytes,
                        "compute_bytes": mem.compute_bytes,
                        "overhead_bytes": mem.overhead_bytes + mem.growth_bytes,
                        "total_bytes": mem.total_bytes,
                    }
                    for slot, (gpu, mem) in enumerate(zip(p.gpus, p.memory.devices))
                ],
                "host_bytes": p.memory.host.total_bytes,
                "slots": p.settings.slots,
                "kv_unified": p.settings.kv_unified,
                "kv_cells": p.settings.kv_cells,
                "tensor_split": list(p.tensor_split) if p.tensor_split is not None else None,
                "n_gpu_layers": p.n_gpu_layers,
                "split_mode": p.split_mode,
                "cuda_visible_devices": p.cuda_visible_devices,
                "notes": list(p.notes),
            }
            for p in plan.placements
        ],
        "problems": list(plan.problems),
    }


def plan_toml_doc(plan: Plan) -> dict:
    """The plan as a TOML document (``gateway plan --write``); None values are left out."""
    doc = plan_json(plan)
    for m in doc["models"]:
        if m["tensor_split"] is None:
            del m["tensor_split"]
    return doc


def status_text(doc: dict) -> str:
    """``gateway status``: each model's state, then planned vs allocated memory per device."""
    lines = []
    for m in doc.get("data", []):
        head = f"{m['id']}: {m.get('state')}"
        if m.get("state") == ModelState.STARTING:
            head += f" ({m.get('progress', 0)}%)"
        if m.get("reason"):
            head += f" - {m['reason']}"
        lines.append(head)
        planned = m.get("planned") or {}
        alloc = m.get("allocated") or {}
        used = m.get("gpu_used_bytes") or {}
        for slot, dev in enumerate(planned.get("devices", [])):
            buf = f"CUDA{slot}"
            actual = sum((alloc.get(k) or {}).get(buf, 0.0) for k in ("model_mib", "kv_mib", "output_mib", "compute_mib"))
            nvml = used.get(str(dev["gpu"]))
            lines.append(
                f"  GPU {dev['gpu']}: planned {dev['total_bytes'] / MIB:,.0f} MiB "
                f"(weights {dev['weights_bytes'] / MIB:,.0f}, KV {dev['kv_bytes'] / MIB:,.0f}, compute {dev['compute_bytes'] / MIB:,.0f}, "
                f"CUDA {dev['overhead_bytes'] / MIB:,.0f}) | llama.cpp buffers {actual:,.0f} MiB"
                + (f" | process on GPU {nvml / MIB:,.0f} MiB" if nvml is not None else "")
            )
        host_actual = llama_host_buffers(alloc) / MIB
        lines.append(f"  host: planned {planned.get('host_bytes', 0) / MIB:,.0f} MiB | llama.cpp buffers {host_actual:,.0f} MiB")
    return "\n".join(lines) if lines else "no models"


def keys_text(keys: list[dict]) -> str:
    """``gateway status``: each API key's use over the last minute against its limits."""

    def used(n: int, limit: int | None) -> str:
        return f"{n:,}/{limit:,}" if limit is not None else f"{n:,}"

    lines = ["key                      requests/min   tokens/min       running   refused (last minute)"]
    for k in keys:
        last = k.get("last_minute") or {}
        refused = ", ".join(f"{r} {n}" for r, n in (last.get("rejected") or {}).items()) or "-"
        running = used(k.get("in_flight", 0), k.get("max_concurrency"))
        lines.append(
            f"{k['name']:<24} {used(last.get('requests', 0), k.get('requests_per_minute')):<14} "
            f"{used(last.get('tokens', 0), k.get('tokens_per_minute')):<16} {running:<9} {refused}"
        )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in (header, *rows))


PS_HEADER = ("NAME", "STATE", "GPU MEMORY", "HOST MEMORY", "CONTEXT", "SLOTS BUSY", "WAITING", "UNLOADS IN")


def ps_text(doc: dict) -> str:
    """``gateway ps`` (like ``ollama ps``): one line per model: its state, the memory planned on
    each GPU (NVML's reading of its process where there is one) and in host memory, its context,
    busy slots of max_concurrency, requests waiting, and when the idle TTL unloads it."""
    rows = []
    for m in doc.get("data", []):
        state = m.get("state", "?")
        if state == ModelState.STARTING:
            state += f" {m.get('progress', 0)}%"
        planned = m.get("planned") or {}
        used = m.get("gpu_used_bytes") or {}
        gpus = ", ".join(
            f"GPU {d['gpu']} {_mib(used.get(str(d['gpu']), d['total_bytes']))} MiB" for d in planned.get("devices", [])
        )
        host = f"{_mib(planned['host_bytes'])} MiB" if planned else "-"
        queue = m.get("queue") or {}
        unload = m.get("unload_in_s")
        rows.append(
            (
                m["id"],
                state,
                gpus or ("CPU only" if planned else "-"),
                host,
                f"{m['n_ctx']:,}" if m.get("n_ctx") is not None else "-",
                f"{queue.get('running', 0)}/{queue.get('max_concurrency', '?')}",
                f"{queue.get('waiting', 0)}/{queue.get('queue_size', '?')}",
                _duration(unload) if unload is not None else "-",
            )
        )
    return _table(PS_HEADER, rows) if rows else "no models"


def logs_text(doc: dict, last: int | None = None) -> str:
    """``gateway logs NAME``: the worker's last stderr lines (``last``: only that many)."""
    lines = list(doc.get("lines", []))
    if last is not None:
        lines = lines[-last:] if last else []
    pid = f"pid {doc['pid']}" if doc.get("pid") is not None else "no worker process"
    head = f"# {doc.get('id')}: {doc.get('state')}, {pid}; {len(lines)} line(s) of its worker's stderr"
    return "\n".join([head, *lines])
