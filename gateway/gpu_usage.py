"""How much GPU memory one process holds, per GPU, as NVML sees it.

Workers report this in their "ready" message, so planned and real usage can be compared. NVML
reports host PIDs: inside a container without the host's PID namespace no process matches, and
the answer is simply empty.
"""

from __future__ import annotations

from collections.abc import Iterable


def process_gpu_memory(pid: int, indices: Iterable[int]) -> dict[str, int]:
    """NVML index (as a string) -> bytes ``pid`` uses on that GPU.

    Only GPUs where NVML lists the process (with a known figure) appear; {} without pynvml, a
    driver or any match. Never raises for NVML's sake.
    """
    indices = list(indices)
    if not indices:
        return {}
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    try:
        out: dict[str, int] = {}
        for index in indices:
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except pynvml.NVMLError:
                continue  # one bad index (or a GPU that fell off the bus) spoils nothing else
            # usedGpuMemory is None where NVML cannot tell (e.g. some MIG or vGPU setups).
            used = [p.usedGpuMemory for p in processes if p.pid == pid and p.usedGpuMemory is not None]
            if used:
                out[str(index)] = int(sum(used))
        return out
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
