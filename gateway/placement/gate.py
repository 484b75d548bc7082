"""The load gate: does llama.cpp's own dry run of exactly this placement fit in the memory free now?

The pool (gateway.runtime.pool, through gateway.placement.gated) places a model with the planner's prediction (an on-demand,
admin or restart load, and each eager model at startup), then, before it starts the worker, runs
the dry run ``gateway plan --verify`` runs (gateway.engine.dry_run: ``no_alloc``, nothing
allocated but the CUDA context) and hands this module the launch (the placement as it will
start), the buffers llama.cpp printed and each GPU's free memory
(gateway.placement.decisions.free_devices).
The answer is pure: ``Pass`` or ``Exceeds`` (by how much on which GPU, and why); the pool acts on it.

What a dry run measures, per GPU slot: the compute buffer (``CUDA<i>``) and the whole KV cache
(its ``size =`` line; the per-buffer KV lines print 0.00 without allocation). Weights print 0.00
and are taken from the plan (exact from the header). A model needs, on each of its GPUs, its
planned bytes plus what llama.cpp measured beyond the plan there: the compute buffer's excess,
and the KV excess shared over the GPUs by their planned KV. A build that offloads nothing
(llama-cpp-python without CUDA: no ``CUDA<i>`` buffer at all) prints its compute under the host's
buffers; its excess over the planned compute of the whole model is then shared over the GPUs by
their planned compute, so a declared inventory on a CPU machine is gated by the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from planner.llama_log import AllocatedBuffers
from gateway.placement.launch import ModelLaunch
from planner.units import MIB

# llama.cpp prints MiB with two decimals: each printed figure is within 0.005 MiB of the truth.
PRINT_ROUNDING_BYTES = int(0.01 * MIB)


@dataclass(frozen=True)
class Pass:
    """The dry run fits: start the worker."""

    need: Mapping[int, int]  # by GPU index: planned bytes plus what llama.cpp measured beyond them


@dataclass(frozen=True)
class Exceeds:
    """The dry run does not fit on ``short`` (GPU index -> bytes missing): do not start it."""

    need: Mapping[int, int]
    excess: Mapping[int, int]  # by GPU index: measured beyond planned (the figure to re-plan with)
    short: Mapping[int, int]
    reason: str


def _mib(value: float) -> int:
    return round(value * MIB)


def _share(total: int, parts: Mapping[int, int]) -> dict[int, int]:
    weight = sum(parts.values())
    if total <= 0 or not parts:
        return {gpu: 0 for gpu in parts}
    if weight <= 0:
        return {gpu: total // len(parts) for gpu in parts}
    return {gpu: total * p // weight for gpu, p in parts.items()}


def measured_excess(launch: ModelLaunch, buffers: AllocatedBuffers) -> dict[int, int]:
    """By GPU index: what llama.cpp's dry run needs beyond the plan (0 where it needs no more)."""
    planned = launch.devices
    gpus = [d.gpu for d in planned]
    excess = {gpu: 0 for gpu in gpus}
    if not gpus:
        return excess
    device_compute = {slot: buffers.compute.get(f"CUDA{slot}") for slot in range(len(gpus))}
    if any(v is not None for v in device_compute.values()):
        for slot, gpu in enumerate(gpus):
            measured = _mib(device_compute[slot] or 0.0)
            excess[gpu] += max(0, measured - planned[slot].compute_bytes - PRINT_ROUNDING_BYTES)
    else:  # nothing offloaded (a build without CUDA): the host's buffers hold the whole compute
        measured = _mib(sum(buffers.compute.values()))
        planned_compute = sum(d.compute_bytes for d in planned) + launch.host_compute_bytes
        over = max(0, measured - planned_compute - PRINT_ROUNDING_BYTES * max(1, len(buffers.compute)))
        for gpu, part in _share(over, {d.gpu: d.compute_bytes for d in planned}).items():
            excess[gpu] += part
    kv_planned = sum(d.kv_bytes for d in planned) + launch.host_kv_bytes
    kv_over = max(0, _mib(buffers.kv_size_mib) - kv_planned - 2 * PRINT_ROUNDING_BYTES)
    for gpu, part in _share(kv_over, {d.gpu: d.kv_bytes for d in planned}).items():
        excess[gpu] += part
    return excess


def check_load(launch: ModelLaunch, buffers: AllocatedBuffers, free: Mapping[int, int]) -> Pass | Exceeds:
    """Whether the dry run's buffers fit in ``free`` (by GPU index: free now for this model)."""
    excess = measured_excess(launch, buffers)
    need = {d.gpu: d.total_bytes + excess[d.gpu] for d in launch.devices}
    short = {gpu: need[gpu] - free.get(gpu, 0) for gpu in need if need[gpu] > free.get(gpu, 0)}
    if not short:
        return Pass(need)
    parts = ", ".join(
        f"GPU {gpu} needs {need[gpu] / MIB:,.0f} MiB (planned {(need[gpu] - excess[gpu]) / MIB:,.0f} + "
        f"{excess[gpu] / MIB:,.0f} measured beyond the plan), {free.get(gpu, 0) / MIB:,.0f} MiB free: "
        f"short by {short[gpu] / MIB:,.0f} MiB"
        for gpu in sorted(short)
    )
    return Exceeds(need, excess, short, f"load gate: llama.cpp's dry run does not fit: {parts}")
