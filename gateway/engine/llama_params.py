"""A WorkerSpec as llama.cpp's model and context parameters: the one place they are built.

The worker (gateway.engine.loading) and the dry run of ``gateway plan --verify``
(gateway.engine.dry_run) both call these functions, so a dry run reserves exactly the context a
worker creates.

Values that the spec does not set are the ones llama-cpp-python 0.3.36's ``Llama()`` passes
(llama.py, "Model Params" and "Context Params"), so one slot decodes as the previous
engine-per-request design did; tests/unit/bench/test_gpu_check.py compares the structs with a
real ``Llama()`` field by field. What differs on purpose: ``n_seq_max`` is the number of slots and
``n_ctx`` the KV cells of all of them (``kv_pool_tokens``, by default ``n_ctx * slots``), ``kv_unified``
comes from the spec, and both thread counts default to every core (llama-cpp-python gives
generation half of them, which halves CPU decode speed).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any

from gateway.engine.protocol import WorkerSpec
from planner.memory import kv_type

SPLIT_MODES = ("none", "layer", "row")
POOLINGS = ("none", "mean", "cls", "last", "rank")


@dataclass(frozen=True)
class ModelParams:
    """llama_model_params, and the ctypes objects its pointers refer to (keep them alive)."""

    params: Any
    keep: tuple[Any, ...] = ()


def kv_cells(spec: WorkerSpec) -> int:
    """The context's n_ctx: the KV cells of every slot together."""
    return spec.kv_pool_tokens if spec.kv_pool_tokens is not None else spec.n_ctx * spec.slots


def batch_size(spec: WorkerSpec) -> int:
    """n_batch: the most tokens one llama_decode takes (llama-cpp-python caps it at n_ctx)."""
    return min(spec.n_ctx, spec.n_batch)


def thread_counts(spec: WorkerSpec) -> tuple[int, int]:
    """(n_threads, n_threads_batch): the spec's, else every core of the machine."""
    cores = os.cpu_count() or 1
    return spec.n_threads or cores, spec.n_threads_batch or cores


def check_spec(spec: WorkerSpec) -> None:
    """ValueError naming the field, for what llama.cpp would refuse or misread."""
    from llama_cpp import llama_cpp as capi

    if spec.split_mode not in SPLIT_MODES:
        raise ValueError(f"split_mode {spec.split_mode!r} (must be one of: {', '.join(SPLIT_MODES)})")
    if spec.pooling is not None and spec.pooling not in POOLINGS:
        raise ValueError(f"pooling {spec.pooling!r} (must be one of: {', '.join(POOLINGS)})")
    max_seq = capi.llama_max_parallel_sequences()
    if not 1 <= spec.slots <= max_seq:
        raise ValueError(f"slots {spec.slots} (must be 1..{max_seq}, llama.cpp's LLAMA_MAX_SEQ)")
    if spec.kv_pool_tokens is not None and spec.kv_pool_tokens < spec.slots:
        raise ValueError(f"kv_pool_tokens {spec.kv_pool_tokens} (must be at least slots = {spec.slots})")
    if spec.n_ctx < 1 or spec.n_batch < 1 or spec.n_ubatch < 1:
        raise ValueError(f"n_ctx, n_batch and n_ubatch must be positive (got {spec.n_ctx}, {spec.n_batch}, {spec.n_ubatch})")


def model_params(spec: WorkerSpec, progress_callback: Any = None) -> ModelParams:
    """llama_model_params for the spec; ``progress_callback`` a llama_progress_callback or None."""
    from llama_cpp import llama_cpp as capi

    check_spec(spec)
    keep: list[Any] = []
    mp = capi.llama_model_default_params()
    mp.n_gpu_layers = 0x7FFFFFFF if spec.n_gpu_layers == -1 else spec.n_gpu_layers
    mp.split_mode = {
        "none": capi.LLAMA_SPLIT_MODE_NONE,
        "layer": capi.LLAMA_SPLIT_MODE_LAYER,
        "row": capi.LLAMA_SPLIT_MODE_ROW,
    }[spec.split_mode]
    mp.main_gpu = 0
    if spec.tensor_split is not None:
        if len(spec.tensor_split) > capi.LLAMA_MAX_DEVICES:
            raise ValueError(f"tensor_split has {len(spec.tensor_split)} entries; LLAMA_MAX_DEVICES is {capi.LLAMA_MAX_DEVICES}")
        array = (ctypes.c_float * capi.LLAMA_MAX_DEVICES)(*spec.tensor_split)
        keep.append(array)
        mp.tensor_split = array
    mp.vocab_only = False
    if spec.use_mmap and spec.use_mlock:
        mp.load_mode = capi.LLAMA_LOAD_MODE_MMAP_MLOCK
    elif spec.use_mlock:
        mp.load_mode = capi.LLAMA_LOAD_MODE_MLOCK
    elif spec.use_mmap:
        mp.load_mode = capi.LLAMA_LOAD_MODE_MMAP
    else:
        mp.load_mode = capi.LLAMA_LOAD_MODE_NONE
    if progress_callback is not None:
        keep.append(progress_callback)
        mp.progress_callback = progress_callback
    return ModelParams(mp, tuple(keep))


def pooling_type(spec: WorkerSpec) -> int:
    from llama_cpp import llama_cpp as capi

    if spec.pooling is None:
        return capi.LLAMA_POOLING_TYPE_UNSPECIFIED  # llama.cpp takes the model's own
    return {
        "none": capi.LLAMA_POOLING_TYPE_NONE,
        "mean": capi.LLAMA_POOLING_TYPE_MEAN,
        "cls": capi.LLAMA_POOLING_TYPE_CLS,
        "last": capi.LLAMA_POOLING_TYPE_LAST,
        "rank": capi.LLAMA_POOLING_TYPE_RANK,
    }[spec.pooling]


def context_params(spec: WorkerSpec) -> Any:
    """llama_context_params for the spec: one context with ``spec.slots`` sequences."""
    from llama_cpp import llama_cpp as capi

    check_spec(spec)
    n_batch = batch_size(spec)
    n_threads, n_threads_batch = thread_counts(spec)
    cp = capi.llama_context_default_params()
    cp.n_ctx = kv_cells(spec)
    cp.n_batch = n_batch
    cp.n_ubatch = min(n_batch, spec.n_ubatch)
    cp.n_seq_max = spec.slots
    cp.kv_unified = spec.kv_unified
    cp.n_threads = n_threads
    cp.n_threads_batch = n_threads_batch
    cp.rope_scaling_type = capi.LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED
    cp.pooling_type = pooling_type(spec)
    cp.attention_type = capi.LLAMA_ATTENTION_TYPE_UNSPECIFIED
    # llama-cpp-python's values, which differ from llama_context_default_params' for YaRN.
    cp.rope_freq_base = 0
    cp.rope_freq_scale = 0
    cp.yarn_ext_factor = -1.0
    cp.yarn_attn_factor = 1.0
    cp.yarn_beta_fast = 32.0
    cp.yarn_beta_slow = 1.0
    cp.yarn_orig_ctx = 0
    cp.embeddings = spec.embedding
    cp.offload_kqv = True
    cp.flash_attn_type = capi.LLAMA_FLASH_ATTN_TYPE_ENABLED if spec.flash_attn else capi.LLAMA_FLASH_ATTN_TYPE_DISABLED
    # Always explicit: llama.cpp's own default (full-size sliding-window caches) is not what the
    # planner sized.
    cp.swa_full = spec.swa_full
    cp.type_k = int(kv_type(spec.type_k))
    cp.type_v = int(kv_type(spec.type_v))
    cp.no_perf = False
    return cp
