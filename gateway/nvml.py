"""The one place that reads NVML. Everything else takes plain data (a ``list[Device]``, a dict of
bytes), so tests stand in for this module with a declared inventory.

Indices are NVML's, which follow PCI bus order; CUDA's default order is "fastest first", so the
gateway sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` for workers to make these indices mean the same
thing in ``CUDA_VISIBLE_DEVICES``. Every reader answers "nothing" (no GPUs, {}) when there is no
pynvml, no driver or no GPU, and never raises for NVML's sake.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from planner.devices import Device


@contextlib.contextmanager
def _session() -> Iterator[Any]:
    """pynvml, initialised for the block, or None where NVML cannot be used."""
    try:
        import pynvml
    except ImportError:
        yield None
        return
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        # No driver, no libnvidia-ml, or no GPU: the machine simply has no NVIDIA GPUs.
        yield None
        return
    try:
        yield pynvml
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_nvml_devices() -> list[Device]:
    """Every NVIDIA GPU with its total and free memory; an empty list when there is no driver."""
    with _session() as nvml:
        if nvml is None:
            return []
        try:
            out = []
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                out.append(
                    Device(
                        index=i,
                        name=_text(nvml.nvmlDeviceGetName(handle)),
                        total_bytes=int(mem.total),
                        free_bytes=int(mem.free),
                        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    )
                )
            return out
        except nvml.NVMLError:
            return []


def device_used_bytes(indices: Iterable[int]) -> dict[int, int]:
    """NVML's "used" bytes per GPU index ({} without NVML)."""
    with _session() as nvml:
        if nvml is None:
            return {}
        out: dict[int, int] = {}
        for i in indices:
            with contextlib.suppress(nvml.NVMLError):
                out[i] = int(nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(i)).used)
        return out


def process_gpu_memory(pid: int, indices: Iterable[int]) -> dict[str, int]:
    """NVML index (as a string) -> bytes ``pid`` uses on that GPU.

    Workers report this in their "ready" message, so planned and real usage can be compared.
    Only GPUs where NVML lists the process (with a known figure) appear. NVML reports host PIDs:
    inside a container without the host's PID namespace no process matches, and the answer is {}.
    """
    indices = list(indices)
    if not indices:
        return {}
    with _session() as nvml:
        if nvml is None:
            return {}
        out: dict[str, int] = {}
        for index in indices:
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except nvml.NVMLError:
                continue  # one bad index (or a GPU that fell off the bus) spoils nothing else
            # usedGpuMemory is None where NVML cannot tell (e.g. some MIG or vGPU setups).
            used = [p.usedGpuMemory for p in processes if p.pid == pid and p.usedGpuMemory is not None]
            if used:
                out[str(index)] = int(sum(used))
        return out
