"""The request options: one declaration each, read by every layer that handles them.

A ``RequestOption`` says an option's field in the request body, its type, its default, its bounds,
whose name it is (OpenAI's, or llama.cpp's as llama-server takes it), the text the OpenAPI
document gives it, the operations that take it, and under which argument the engine receives it.
From ``OPTIONS`` come:

- the HTTP parser (``parse``, called by gateway.http.openai_params): a 400 naming the field;
- the OpenAPI schema's properties (``schema``, gateway.http.openai_params);
- the engine's options: ``CompletionOptions`` (gateway.engine.completion) and ``SamplingParams``
  (gateway.engine.sampling) are dataclasses built from these declarations (``options_class``),
  their defaults llama-cpp-python 0.3.36's ``Llama.create_completion``'s.

Adding an option is one entry in ``OPTIONS``; a sampler option (``sampler=True``) also needs its
llama.cpp sampler in ``SamplerChain._build``.

Checked once: HTTP checks every option it forwards. The engine trusts the types it is handed
(the HTTP parser's, passed on by llama-cpp-python's chat handlers) and checks what needs its
model (``n`` against its slots, ``logit_bias`` against its vocabulary, the prompt against its
context); the values it hands llama.cpp's C samplers (``sampler=True``) it passes through the same
``RequestOption.check`` first, so that no request can reach them with a value they would divide
by or loop on. Pure: no I/O, no numpy, no llama_cpp (the worker imports it before numpy).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.errors import InvalidRequestError

Op = Literal["chat", "completion", "embedding"]
GENERATE: frozenset[Op] = frozenset({"chat", "completion"})
CHAT: frozenset[Op] = frozenset({"chat"})
COMPLETION: frozenset[Op] = frozenset({"completion"})
EMBEDDING: frozenset[Op] = frozenset({"embedding"})

MAX_CHOICES = 128  # OpenAI's own limit on n


# ---------------------------------------------------------------- kinds: a value's JSON type


def _as_int(value: Any) -> Any:
    """An integral float (``12.0``, an integer to JSON Schema) as an int; anything else unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"'{key}' must be a number, not {type(value).__name__}", param=key)
    if not math.isfinite(value):
        raise InvalidRequestError(f"'{key}' must be a finite number, not {value!r}", param=key)
    return float(value)


def _integer(key: str, value: Any) -> int:
    value = _as_int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        what = "a boolean" if isinstance(value, bool) else repr(value) if isinstance(value, float) else type(value).__name__
        raise InvalidRequestError(f"'{key}' must be an integer, not {what}", param=key)
    return value


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequestError(f"'{key}' must be a boolean, not {type(value).__name__}", param=key)
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"'{key}' must be a string, not {type(value).__name__}", param=key)
    return value


def _strings(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise InvalidRequestError(f"'{key}' must be a string or a list of strings", param=key)
    return value


def _token_bias(key: str, value: Any) -> dict[str, float]:
    ok = isinstance(value, dict) and all(
        isinstance(token, str) and token.isascii() and token.isdigit() and not isinstance(bias, bool) and isinstance(bias, (int, float))
        for token, bias in value.items()
    )
    if not ok:
        raise InvalidRequestError(f"'{key}' must map token ids (decimal strings) to numbers", param=key)
    for token, bias in value.items():
        _number(f"{key}[{token}]", bias)
    return value


def _object(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequestError(f"'{key}' must be an object", param=key)
    return value


@dataclass(frozen=True)
class Kind:
    """A JSON type: its check (the value as the engine takes it, or a 400 naming the field), its
    JSON Schema and its Python type (the engine's field)."""

    check: Callable[[str, Any], Any]
    schema: Mapping[str, Any]
    python: Any


NUMBER = Kind(_number, {"type": "number"}, float)
INTEGER = Kind(_integer, {"type": "integer"}, int)
BOOLEAN = Kind(_boolean, {"type": "boolean"}, bool)
STRING = Kind(_string, {"type": "string"}, str)
STRINGS = Kind(_strings, {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}, list)
TOKEN_BIAS = Kind(
    _token_bias,
    {"type": "object", "propertyNames": {"pattern": "^[0-9]{1,9}$"}, "additionalProperties": {"type": "number"}},
    dict,
)
OBJECT = Kind(_object, {"type": "object"}, dict)


@dataclass(frozen=True)
class Bounds:
    """Inclusive bounds (``low`` exclusive when ``low_open``); None: unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def check(self, key: str, value: Any) -> None:
        low, high = self.low, self.high
        below = low is not None and (value <= low if self.low_open else value < low)
        above = high is not None and value > high
        if below or above or value != value:  # NaN is out of every bound
            if low is not None and high is not None:
                allowed = f"from {low:g} to {high:g}"
            elif low is not None:
                allowed = f"greater than {low:g}" if self.low_open else f"at least {low:g}"
            else:
                allowed = f"at most {high:g}"
            raise InvalidRequestError(f"'{key}' must be {allowed}, not {value!r}", param=key)

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.low is not None:
            out["exclusiveMinimum" if self.low_open else "minimum"] = self.low
        if self.high is not None:
            out["maximum"] = self.high
        return out


# ---------------------------------------------------------------- the declaration


@dataclass(frozen=True)
class RequestOption:
    """One request option."""

    name: str  # the request body's field
    kind: Kind
    ops: frozenset[Op]  # the operations that take it
    description: str
    default: Any = None  # the engine's when absent (llama-cpp-python's create_completion's)
    bounds: Bounds | None = None
    choices: tuple[Any, ...] | None = None  # the values allowed, when only a few are
    openai: bool = True  # OpenAI's name; False: llama.cpp's, as llama-server takes it
    arg: str | None = None  # the engine's argument (llama-cpp-python's name); None: ``name``
    engine: bool = True  # the engine receives it (False: HTTP alone handles it)
    sampler: bool = False  # a setting of the llama.cpp sampler chain (SamplingParams)
    alias: str | None = None  # a newer field for the same option, preferred when both are given
    requires: str | None = None  # forwarded only when this other option is true

    @property
    def engine_arg(self) -> str:
        return self.arg or self.name

    def check(self, value: Any, key: str | None = None) -> Any:
        """The value as the engine takes it; InvalidRequestError naming ``key`` (the field) when
        it is not of the option's kind, within its bounds and choices. None stays None (absent)."""
        if value is None:
            return None
        key = key or self.name
        value = self.kind.check(key, value)
        if self.bounds is not None:
            self.bounds.check(key, value)
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(str(c) for c in self.choices)
            raise InvalidRequestError(f"'{key}' must be one of {allowed}, not {value!r}", param=key)
        return value

    def schema(self, *, with_default: bool = True) -> dict[str, Any]:
        """The field's JSON Schema (nullable: null means absent)."""
        schema: dict[str, Any] = dict(self.kind.schema)
        if self.bounds is not None:
            schema.update(self.bounds.schema())
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        text = self.description if self.openai else f"{self.description} (llama.cpp's, as llama-server takes it; not OpenAI's)"
        schema["description"] = text
        if with_default and self.engine and self.default is not None:
            schema["default"] = self.default
        return {"anyOf": [schema, {"type": "null"}]}


def _sampler(name: str, kind: Kind, default: Any, description: str, **kw: Any) -> RequestOption:
    return RequestOption(name, kind, GENERATE, description, default=default, sampler=True, **kw)


# Every option a request may carry besides its payload (messages, prompt, input, tools...), in the
# order the OpenAPI document lists them. Bounds are OpenAI's where OpenAI has the option.
OPTIONS: tuple[RequestOption, ...] = (
    RequestOption(
        "max_tokens",
        INTEGER,
        GENERATE,
        "At most this many tokens are generated. A value beyond the room left in the model's "
        "context (n_ctx - prompt tokens) is not an error: generation stops at the end of the "
        "context with finish_reason \"length\". Absent: completions default to 16 tokens, chat "
        "completions run to the end of the context.",
        default=16,
        bounds=Bounds(1),
        alias="max_completion_tokens",
    ),
    _sampler("temperature", NUMBER, 0.8, "Sampling temperature; 0: greedy.", bounds=Bounds(0, 2)),
    _sampler("top_p", NUMBER, 0.95, "Nucleus sampling: the smallest set of tokens whose probabilities add up to this.", bounds=Bounds(0, 1)),
    _sampler("top_k", INTEGER, 40, "Only the k most likely tokens; 0 or less: all.", openai=False),
    _sampler("min_p", NUMBER, 0.05, "Only tokens at least this share of the most likely token's probability.", bounds=Bounds(0, 1), openai=False),
    _sampler("typical_p", NUMBER, 1.0, "Locally typical sampling; 1: off.", bounds=Bounds(0, 1), openai=False),
    _sampler(
        "mirostat",
        INTEGER,
        0,
        "Mirostat sampling instead of top-k/top-p/min-p: 0 off, 1 Mirostat, 2 Mirostat 2.0.",
        choices=(0, 1, 2),
        openai=False,
        arg="mirostat_mode",
    ),
    _sampler("mirostat_tau", NUMBER, 5.0, "Mirostat's target entropy.", bounds=Bounds(0), openai=False),
    _sampler("mirostat_eta", NUMBER, 0.1, "Mirostat's learning rate.", bounds=Bounds(0, 1), openai=False),
    _sampler("seed", INTEGER, None, "The same seed and request give the same text (on an idle model without kv_unified).", openai=True),
    _sampler("presence_penalty", NUMBER, 0.0, "Penalty on tokens already generated.", bounds=Bounds(-2, 2)),
    _sampler("frequency_penalty", NUMBER, 0.0, "Penalty on tokens by how often they were generated.", bounds=Bounds(-2, 2)),
    _sampler("repeat_penalty", NUMBER, 1.0, "Divides the logits of the last 64 tokens generated; 1: no penalty.", bounds=Bounds(0, low_open=True), openai=False),
    _sampler("logit_bias", TOKEN_BIAS, None, "Token id (a decimal string) -> bias added to its logit."),
    RequestOption("stop", STRINGS, GENERATE, "Generation stops before any of these strings."),
    RequestOption(
        "n",
        INTEGER,
        GENERATE,
        "Choices to generate; at most the model's max_concurrency (its slots), else 400.",
        default=1,
        bounds=Bounds(1, MAX_CHOICES),
    ),
    RequestOption("stream", BOOLEAN, GENERATE, "Stream the answer as server-sent events.", default=False, engine=False),
    RequestOption(
        "stream_options", OBJECT, GENERATE, "With include_usage: true, a last chunk carries the usage.", engine=False
    ),
    RequestOption("logprobs", BOOLEAN, CHAT, "Return each generated token's log-probability."),
    RequestOption(
        "top_logprobs",
        INTEGER,
        CHAT,
        "With logprobs: this many most likely alternatives per token.",
        bounds=Bounds(0, 20),
        requires="logprobs",
    ),
    RequestOption(
        "parallel_tool_calls",
        BOOLEAN,
        CHAT,
        "With tools: whether one answer may make several calls (absent: yes, where the model's chat template can).",
    ),
    RequestOption(
        "logprobs",
        INTEGER,
        COMPLETION,
        "Return each generated token's log-probability with this many most likely alternatives.",
        bounds=Bounds(0, 5),
    ),
    RequestOption("echo", BOOLEAN, COMPLETION, "The answer starts with the prompt.", default=False),
    RequestOption("suffix", STRING, COMPLETION, "Text that comes after the completion."),
    RequestOption(
        "encoding_format",
        STRING,
        EMBEDDING,
        "float: a list of numbers; base64: the little-endian float32 bytes.",
        default="float",
        choices=("float", "base64"),
    ),
)

# Schema properties for the body's fields that are options' aliases (max_completion_tokens).
_ALIAS_TEXT = "Preferred over {name} when both are given."


def options_for(op: Op) -> tuple[RequestOption, ...]:
    return tuple(o for o in OPTIONS if op in o.ops)


def option(name: str, op: Op) -> RequestOption:
    """The declaration of field ``name`` for ``op``."""
    for o in OPTIONS:
        if o.name == name and op in o.ops:
            return o
    raise KeyError(f"{name} ({op})")


def parse(op: Op, body: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a request body for ``op`` that the engine receives, checked, under the
    engine's argument names; absent and null fields are left out (the engine's defaults hold).
    InvalidRequestError names the first field that is wrong."""
    values: dict[str, Any] = {}
    for o in options_for(op):
        key = o.alias if o.alias is not None and body.get(o.alias) is not None else o.name
        values[o.name] = o.check(body.get(key), key)
    params: dict[str, Any] = {}
    for o in options_for(op):
        value = values[o.name]
        if value is None or not o.engine or (o.requires is not None and not values.get(o.requires)):
            continue
        params[o.engine_arg] = value
    return params


def schema(op: Op) -> dict[str, Any]:
    """The JSON Schema properties of ``op``'s options (and their aliases). A chat's defaults
    are llama-cpp-python's ``create_chat_completion``'s (temperature 0.2, no max_tokens), not the
    engine's completion defaults, so only a completion's schema gives defaults."""
    properties: dict[str, Any] = {}
    for o in options_for(op):
        properties[o.name] = o.schema(with_default=op != "chat")
        if o.alias is not None:
            alias = o.schema(with_default=False)
            alias["anyOf"][0]["description"] = _ALIAS_TEXT.format(name=o.name)
            properties[o.alias] = alias
    return properties


# ---------------------------------------------------------------- the engine's dataclasses


def engine_options(op: Op, *, sampler: bool | None = None) -> tuple[RequestOption, ...]:
    """The options the engine receives for ``op`` (only the sampler's, or all but, with ``sampler``)."""
    return tuple(o for o in options_for(op) if o.engine and (sampler is None or o.sampler == sampler))


def options_class(
    name: str,
    options: Iterable[RequestOption],
    *,
    first: Iterable[tuple[str, Any]] = (),
    extra: Iterable[tuple[str, Any, Any]] = (),
    overrides: Mapping[str, tuple[Any, Any]] = {},
    module: str,
    doc: str,
) -> type:
    """A frozen dataclass with a field per option (its engine argument, type and default):
    ``first`` (name, type) fields without defaults, then the options, then ``extra`` (name,
    type, default) fields; ``overrides`` name -> (type, default) replaces an option's (a
    ``dataclasses.field`` as the default is kept as it is)."""
    fields: list[tuple[str, Any, Any]] = [(n, t, dataclasses.field()) for n, t in first]
    for o in options:
        typ, default = overrides.get(o.engine_arg, (o.kind.python if o.default is not None else o.kind.python | None, o.default))
        fields.append((o.engine_arg, typ, default if isinstance(default, dataclasses.Field) else dataclasses.field(default=default)))
    for n, t, default in extra:
        fields.append((n, t, default if isinstance(default, dataclasses.Field) else dataclasses.field(default=default)))
    cls = dataclasses.make_dataclass(name, fields, frozen=True)
    cls.__module__ = module  # make_dataclass takes module= from Python 3.12
    cls.__doc__ = doc
    return cls
