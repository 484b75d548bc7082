"""The one place that reads NVML. Everything else takes a ``list[Device]``, so tests stand in
for this module with a declared inventory.

Indices are NVML's, which follow PCI bus order; CUDA's default order is "fastest first", so the
gateway sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` for workers to make these indices mean the same
thing in ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

from planner.devices import Device


def read_nvml_devices() -> list[Device]:
    """Every NVIDIA GPU with its total and free memory; an empty list when there is no driver."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        # No driver, no libnvidia-ml, or no GPU: the machine simply has no NVIDIA GPUs.
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            out.append(
                Device(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    total_bytes=int(mem.total),
                    free_bytes=int(mem.free),
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                )
            )
        return out
    except pynvml.NVMLError:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
