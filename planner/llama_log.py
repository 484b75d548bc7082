"""Parse the buffer-size lines llama.cpp prints (llama-cpp-python with ``verbose=True``).

They report what was really allocated, per buffer (``CUDA0``, ``CUDA_Host``, ``CPU``,
``CPU_Mapped``, ``CPU_REPACK``...), so workers can serve planned and actual figures side by side
and tests can hold the memory model to llama.cpp's own numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_MODEL = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
_KV = re.compile(r"llama_kv_cache:\s+(\S+) KV buffer size =\s+([\d.]+) MiB")
_KV_SIZE = re.compile(r"llama_kv_cache: size =\s+([\d.]+) MiB \(\s*(\d+) cells,\s+(\d+) layers")
_OUTPUT = re.compile(r"llama_context:\s+(\S+)\s+output buffer size =\s+([\d.]+) MiB")
_COMPUTE = re.compile(r"sched_reserve:\s+(\S+) compute buffer size =\s+([\d.]+) MiB")
_OFFLOADED = re.compile(r"load_tensors: offloaded (\d+)/(\d+) layers to GPU")


@dataclass
class AllocatedBuffers:
    """MiB per buffer name, as llama.cpp printed them (SWA models print two KV lines: summed)."""

    model: dict[str, float] = field(default_factory=dict)
    kv: dict[str, float] = field(default_factory=dict)
    kv_size_mib: float = 0.0  # from the "size =" lines: right even in a no_alloc dry run
    output: dict[str, float] = field(default_factory=dict)
    compute: dict[str, float] = field(default_factory=dict)
    offloaded_layers: int | None = None
    total_layers: int | None = None

    def as_dict(self) -> dict:
        return {
            "model_mib": dict(self.model),
            "kv_mib": dict(self.kv),
            "output_mib": dict(self.output),
            "compute_mib": dict(self.compute),
            "offloaded_layers": self.offloaded_layers,
            "total_layers": self.total_layers,
        }


def parse_buffer_lines(lines: Iterable[str]) -> AllocatedBuffers:
    """Collect every buffer-size line; later lines for the same buffer add up."""
    out = AllocatedBuffers()
    for line in lines:
        for pattern, target in ((_MODEL, out.model), (_KV, out.kv), (_OUTPUT, out.output), (_COMPUTE, out.compute)):
            m = pattern.search(line)
            if m:
                target[m.group(1)] = target.get(m.group(1), 0.0) + float(m.group(2))
                break
        else:
            m = _KV_SIZE.search(line)
            if m:
                out.kv_size_mib += float(m.group(1))
                continue
            m = _OFFLOADED.search(line)
            if m:
                out.offloaded_layers, out.total_layers = int(m.group(1)), int(m.group(2))
    return out


# A worker's report (``AllocatedBuffers.as_dict()``): llama.cpp names a GPU's buffers CUDA<n>.
_CUDA_BUFFER = re.compile(r"CUDA(\d+)")
_ALLOCATED_SECTIONS = ("model_mib", "kv_mib", "output_mib", "compute_mib")
_MIB = 1024 * 1024


def gpu_buffer_slot(buffer: str) -> int | None:
    """The CUDA device slot of a GPU buffer's name (``CUDA1`` -> 1); None for a host buffer
    (``CUDA_Host``, ``CPU``, ``CPU_REPACK``)."""
    m = _CUDA_BUFFER.fullmatch(buffer)
    return int(m.group(1)) if m is not None else None


def llama_buffers_per_gpu(allocated: Mapping[str, Any], gpu_order: Sequence[int]) -> dict[int, int]:
    """Bytes llama.cpp allocated per NVML GPU index, from a worker's ``allocated`` report.

    ``allocated`` is ``planner.llama_log.AllocatedBuffers.as_dict()`` (MiB per buffer name).
    llama.cpp names GPU buffers ``CUDA<n>`` with ``n`` the position in the worker's
    ``CUDA_VISIBLE_DEVICES``, so ``gpu_order`` is that list of NVML indices (the launch's
    ``[d.gpu for d in launch.devices]``). Host buffers (``CUDA_Host``, ``CPU*``) are not GPU
    memory and are left out.
    """
    out: dict[int, int] = {}
    for section in _ALLOCATED_SECTIONS:
        for buffer, mib in (allocated.get(section) or {}).items():
            slot = gpu_buffer_slot(str(buffer))
            if slot is None or slot >= len(gpu_order):
                continue
            gpu = gpu_order[slot]
            out[gpu] = out.get(gpu, 0) + round(float(mib) * _MIB)
    return out


def llama_host_buffers(allocated: Mapping[str, Any]) -> int:
    """Bytes llama.cpp allocated in host memory (``CPU*`` and pinned ``CUDA_Host`` buffers)."""
    total = 0
    for section in _ALLOCATED_SECTIONS:
        for buffer, mib in (allocated.get(section) or {}).items():
            if gpu_buffer_slot(str(buffer)) is None:
                total += round(float(mib) * _MIB)
    return total
