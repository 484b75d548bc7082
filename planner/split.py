"""llama.cpp's layer-to-device rule (split_mode = layer), and its inverse.

The rule, as vendored in llama-cpp-python 0.3.36 (vendor/llama.cpp/src/llama-model.cpp,
``llama_model::load_tensors``, "calculate the split points"):

- the tensor_split weights become cumulative sums, each divided by the total, in float32;
- ``i_gpu_start = max(n_layer + 1 - n_gpu_layers, 0)`` and
  ``act_gpu_layers = min(n_gpu_layers, n_layer + 1)``; layer index ``n_layer`` is the output
  layer, so the offloaded layers are always the last ones;
- an offloaded layer ``il`` goes to the first device whose cumulative fraction is strictly
  greater than ``float(il - i_gpu_start) / act_gpu_layers`` (``std::upper_bound``).

We emit the planned layer counts themselves as the weights. The cumulative sums of small
integers are exact in float32, and the boundary layer ``S`` of a device is compared as
``fl(S / act)`` against its own cumulative fraction ``fl(S / act)``: equal, so not strictly
greater, so it lands on the next device; the layer before it is smaller by ``1/act``, far more
than float32 rounding. The round trip is therefore exact; tests prove it on random cases.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import numpy as np


def resolve_n_gpu_layers(n_gpu_layers: int, n_layers: int) -> int:
    """Layers llama.cpp offloads for ``n_gpu_layers`` (-1 or more than exist means all + output)."""
    if n_gpu_layers < 0:
        return n_layers + 1
    return min(n_gpu_layers, n_layers + 1)


def assign_layers(
    tensor_split: Sequence[float] | None,
    n_devices: int,
    n_layers: int,
    n_gpu_layers: int,
    free_bytes: Sequence[int] | None = None,
) -> list[int | None]:
    """Device of each layer 0..n_layers (the last is the output layer) under llama.cpp's rule.

    ``None`` means the CPU. Without a tensor_split (or an all-zero one) llama.cpp weighs the
    devices by their free memory at load time, which the caller passes as ``free_bytes``.
    """
    if n_devices == 0:
        return [None] * (n_layers + 1)
    if tensor_split is None or all(w == 0 for w in tensor_split[:n_devices]):
        if free_bytes is None:
            raise ValueError("without a tensor_split llama.cpp splits by free memory: pass free_bytes")
        weights = [float(b) for b in free_bytes[:n_devices]]
    else:
        weights = [float(w) for w in tensor_split[:n_devices]]
        weights += [0.0] * (n_devices - len(weights))

    splits = np.zeros(n_devices, dtype=np.float32)
    total = np.float32(0.0)
    for i, w in enumerate(weights):
        total = np.float32(total + np.float32(w))
        splits[i] = total
    splits = (splits / total).astype(np.float32)
    cumulative = [float(s) for s in splits]

    n_layer_all = n_layers
    ngl = n_layer_all + 1 if n_gpu_layers < 0 else n_gpu_layers
    i_gpu_start = max(n_layer_all + 1 - ngl, 0)
    act = min(ngl, n_layer_all + 1)
    out: list[int | None] = []
    for il in range(n_layer_all + 1):
        if il < i_gpu_start or (il - i_gpu_start) >= act:
            out.append(None)
            continue
        x = float(np.float32(il - i_gpu_start) / np.float32(act))
        out.append(bisect_right(cumulative, x))
    return out


def layer_counts(assignment: Sequence[int | None], n_devices: int) -> list[int]:
    """Layers (the output layer included) that each device gets in an assignment."""
    counts = [0] * n_devices
    for dev in assignment:
        if dev is not None:
            counts[dev] += 1
    return counts


def tensor_split_for_counts(counts: Sequence[int]) -> list[float]:
    """Weights that make llama.cpp give exactly ``counts[i]`` offloaded layers to device i.

    The layers are the last ``sum(counts)`` of the model (output layer included), in device
    order; see the module docstring for why integer weights are exact.
    """
    if any(c < 0 for c in counts) or sum(counts) == 0:
        raise ValueError(f"layer counts must be >= 0 and not all zero: {list(counts)}")
    return [float(c) for c in counts]


def format_tensor_split(split: Sequence[float]) -> str:
    """The comma-separated form the CLI flag and llama.cpp's tools take."""
    return ",".join(f"{w:g}" for w in split)
