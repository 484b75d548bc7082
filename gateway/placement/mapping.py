"""A model's config, mapped once to what the planner, the worker and llama-fit-params need.

The one place that knows which ``[[models]]`` key goes where:

- ``run_settings``: the llama.cpp context parameters, as the planner sizes them
  (``planner.memory.RunSettings``). The worker (``worker_context``) and llama-fit-params
  (``gateway.cli.fit_params.fit_arguments``) take theirs from these settings, never from the
  config again, so they run exactly what was planned.
- ``model_request``: the settings plus the placement keys, for ``planner.plan``.
- ``worker_context``: the settings as WorkerSpec fields; ``ModelLaunch.worker_spec`` adds where
  the plan put the model and the keys only the worker reads (chat_format, pooling, use_mlock).
"""

from __future__ import annotations

from typing import Any

from gateway.config.schema import ModelConfig
from planner.memory import RunSettings
from planner.model_info import ModelInfo
from planner.plan import ModelRequest
from planner.units import MIB

# Context parameters that carry the same name in ModelConfig, RunSettings and WorkerSpec.
CONTEXT_KEYS: tuple[str, ...] = (
    "n_ctx",
    "n_batch",
    "n_ubatch",
    "flash_attn",
    "type_k",
    "type_v",
    "swa_full",
    "embedding",
    "use_mmap",
    "kv_unified",
)


def run_settings(model: ModelConfig) -> RunSettings:
    """One context of ``max_concurrency`` slots; ``kv_pool_tokens`` sizes a unified pool."""
    return RunSettings(
        **{key: getattr(model, key) for key in CONTEXT_KEYS},
        slots=model.max_concurrency,
        kv_pool_tokens=model.kv_pool_tokens,
    )


def model_request(model: ModelConfig, info: ModelInfo, *, learned_bytes: int = 0) -> ModelRequest:
    """What the planner needs of one model; ``learned_bytes``: what it was measured to need per
    GPU beyond the estimate (gateway.placement.learning), planned from then on."""
    return ModelRequest(
        name=model.name,
        info=info,
        settings=run_settings(model),
        n_gpu_layers=model.n_gpu_layers,
        split_mode=model.split_mode,
        tensor_split=tuple(model.tensor_split) if model.tensor_split is not None else None,
        gpus=tuple(model.gpus) if model.gpus is not None else None,
        max_vram_bytes=model.max_vram_mib * MIB if model.max_vram_mib is not None else None,
        priority=model.priority,
        allow_cpu_offload=model.allow_cpu_offload,
        weight=model.weight,
        learned_bytes=learned_bytes,
    )


def worker_context(settings: RunSettings) -> dict[str, Any]:
    """The WorkerSpec fields of the context the planner sized: one llama.cpp context of
    ``slots`` sequences and ``kv_pool_tokens`` cells in all (always explicit, so the worker computes
    nothing the planner did not)."""
    return {
        **{key: getattr(settings, key) for key in CONTEXT_KEYS},
        "slots": settings.slots,
        "kv_pool_tokens": settings.kv_cells,
    }
