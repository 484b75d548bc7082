"""The checks that involve more than one field: every cross-field rule of models.toml.

They run once per config, on one input: the TOML-shaped data (``[gateway]`` after its
``GATEWAY_*`` overrides). Each rule reads a table through a getter that validates the one field
it asks for, so a field that failed its own validation (already reported by the schema) reads
as ``INVALID`` and only the rules that need it are skipped: a file's schema errors and its
cross-field errors are reported together, at once. ``parse_config`` and the keys file call
``cross_problems`` on what they read; a ``Config`` or ``ModelConfig`` built in code calls it on
its own dump (gateway.config.schema).

To add a rule: write it here (or, for ``[[nodes]]`` and ``[[keys]]``, next to their tables in
gateway.config.nodes and gateway.config.keys) and call it from ``cross_problems``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from gateway.config.fields import ANY_ORIGIN, QUANTIZED_CACHE_TYPES, field_type
from gateway.config.keys import key_problems
from gateway.config.nodes import cluster_problems
from gateway.config.problems import Loc, Problem, annotation_at, dotted, show

INVALID = object()
Getter = Callable[[str], Any]
# Validators of one table kind's fields, shared by the getters of many tables of that kind (a
# thousand [[keys]] would otherwise build a thousand validators per field, seconds in all).
Adapters = dict[tuple[type[BaseModel], str], TypeAdapter]


def valid(*values: Any) -> bool:
    """False when any value failed its own validation (and was reported by the schema)."""
    return all(v is not INVALID for v in values)


def table_getter(cls: type[BaseModel], data: Any, adapters: Adapters | None = None) -> Getter:
    """A getter over one TOML table of kind ``cls``: a key's validated value, its default when
    the key is absent, ``INVALID`` when the value (or the table) fails validation."""
    shared: Adapters = {} if adapters is None else adapters
    strict = bool(cls.model_config.get("strict", False))

    def get(key: str) -> Any:
        if not isinstance(data, Mapping):
            return INVALID
        field = cls.model_fields[key]
        if key not in data:
            return field.get_default(call_default_factory=True)
        adapter = shared.get((cls, key))
        if adapter is None:
            adapter = shared[(cls, key)] = TypeAdapter(field_type(field))
        try:
            return adapter.validate_python(data[key], strict=strict)
        except ValidationError:
            return INVALID

    return get


def cross_problems(data: Mapping[str, Any], root: type[BaseModel]) -> list[Problem]:
    """Every cross-field problem of a config's TOML data (``root``: the ``Config`` class)."""
    adapters: Adapters = {}

    def tables(section: str) -> list[Getter] | None:
        rows = data.get(section)
        if not isinstance(rows, list):
            return None
        cls = annotation_at(root, (section, 0))
        return [table_getter(cls, row, adapters) for row in rows]

    gateway = table_getter(annotation_at(root, ("gateway",)), data.get("gateway", {}), adapters)
    planner = table_getter(annotation_at(root, ("planner",)), data.get("planner", {}), adapters)
    models = tables("models") or []
    keys = tables("keys") or []

    problems = _name_problems(gateway, models)
    problems += _origin_problems(gateway, bool(keys))
    problems += _gpu_index_problems(planner, models)
    for i, get in enumerate(models):
        problems += model_problems(get, ("models", i))
    problems += [
        Problem(loc, text)
        for loc, text in cluster_problems(
            planner, models, tables("nodes"), has_nodes="nodes" in data, has_router="router" in data, valid=valid
        )
    ]
    problems += [
        Problem(loc, text)
        for loc, text in key_problems(keys, models, gateway("api_keys"), keys_file=gateway("keys_file"), valid=valid)
    ]
    return problems


def _origin_problems(gateway: Getter, has_key_tables: bool) -> list[Problem]:
    """``allowed_origins = ["*"]`` lets every web page call the API: only when every call needs a key."""
    origins, api_keys, keys_file = gateway("allowed_origins"), gateway("api_keys"), gateway("keys_file")
    if not valid(origins) or ANY_ORIGIN not in origins:
        return []
    if has_key_tables or (valid(api_keys) and api_keys) or (valid(keys_file) and keys_file):
        return []
    return [Problem(
        ("gateway", "allowed_origins", origins.index(ANY_ORIGIN)),
        f"{ANY_ORIGIN!r} (any web page could call this gateway, which has no API key: set api_keys or "
        "[[keys]], or list the origins, e.g. 'http://localhost:3000')",
    )]


def model_problems(get: Getter, prefix: Loc) -> list[Problem]:
    """The rules within one ``[[models]]`` table (``prefix``: its location)."""
    problems = []
    n_batch, n_ubatch = get("n_batch"), get("n_ubatch")
    if valid(n_batch, n_ubatch) and n_ubatch > n_batch:
        problems.append(Problem(prefix + ("n_ubatch",), f"{n_ubatch!r} (must be <= n_batch ({n_batch}))"))
    type_v, flash_attn = get("type_v"), get("flash_attn")
    if valid(type_v, flash_attn) and type_v in QUANTIZED_CACHE_TYPES and not flash_attn:
        # llama.cpp cannot use a quantized V cache without flash attention; it fails at load time.
        problems.append(Problem(prefix + ("type_v",), f"{type_v!r} (a quantized V cache requires flash_attn = true)"))
    slots, pool, unified, n_ctx = get("max_concurrency"), get("kv_pool_tokens"), get("kv_unified"), get("n_ctx")
    if valid(slots, n_batch, n_ctx) and slots > min(n_batch, n_ctx):
        # A decode step carries one token of every running request in one batch, and a batch
        # holds at most min(n_batch, n_ctx) tokens (llama.cpp aborts on more sequences).
        problems.append(Problem(
            prefix + ("max_concurrency",), f"{slots!r} (must be <= min(n_batch, n_ctx) = {min(n_batch, n_ctx)})"
        ))
    if pool is not None and valid(pool, unified) and not unified:
        problems.append(Problem(prefix + ("kv_pool_tokens",), f"{pool!r} (sizes the shared pool: needs kv_unified = true)"))
    elif pool is not None and valid(pool, n_ctx) and pool < n_ctx:
        problems.append(Problem(prefix + ("kv_pool_tokens",), f"{pool!r} (must be >= n_ctx ({n_ctx}): one request may fill its context)"))
    tensor_split, split_mode = get("tensor_split"), get("split_mode")
    if tensor_split is not None and valid(tensor_split, split_mode) and split_mode == "none":
        problems.append(Problem(
            prefix + ("tensor_split",),
            f"{show(tensor_split)} (has no effect with split_mode = 'none'; remove it or use 'layer' or 'row')",
        ))
    return problems


def _name_problems(gateway: Getter, models: list[Getter]) -> list[Problem]:
    """Model names and aliases are unique, and ``default_model`` is one of them."""
    problems: list[Problem] = []
    owner: dict[str, str] = {}  # name or alias -> where it was first defined
    names_complete = True
    for i, get in enumerate(models):
        name = get("name")
        if not valid(name):
            names_complete = False
            continue
        if name in owner:
            problems.append(Problem(("models", i, "name"), f"{name!r} (duplicate of {owner[name]})"))
        else:
            owner[name] = f"models[{i}].name"
    # Aliases after all names: an alias that shadows a later model's name is the alias's fault.
    for i, get in enumerate(models):
        aliases, name = get("aliases"), get("name")
        if not valid(aliases):
            names_complete = False
            continue
        for j, alias in enumerate(aliases):
            loc = ("models", i, "aliases", j)
            if valid(name) and alias == name:
                problems.append(Problem(loc, f"{alias!r} (same as this model's name)"))
            elif alias in owner:
                problems.append(Problem(loc, f"{alias!r} (duplicate of {owner[alias]})"))
            else:
                owner[alias] = dotted(loc)

    default = gateway("default_model")
    if names_complete and valid(default) and default is not None and default not in owner:
        known = ", ".join(owner) or "none"
        problems.append(
            Problem(("gateway", "default_model"), f"{default!r} (not a model name or alias; known: {known})")
        )
    return problems


def _gpu_index_problems(planner: Getter, models: list[Getter]) -> list[Problem]:
    """With a declared inventory, GPU indices can be checked now rather than at planning time."""
    problems: list[Problem] = []
    declared = planner("gpus")
    if not valid(declared) or declared is None:
        return problems
    count = len(declared)
    allowed = f"planner.gpus declares {count} GPU{'s' if count != 1 else ''}: indices 0..{count - 1}"
    devices = planner("devices")
    if valid(devices) and devices is not None:
        for j, index in enumerate(devices):
            if index >= count:
                problems.append(Problem(("planner", "devices", j), f"{index!r} (not a GPU: {allowed})"))
    for i, get in enumerate(models):
        gpus = get("gpus")
        if valid(gpus) and gpus is not None:
            for j, index in enumerate(gpus):
                if index >= count:
                    problems.append(Problem(("models", i, "gpus", j), f"{index!r} (not a GPU: {allowed})"))
    return problems
