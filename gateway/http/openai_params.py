"""OpenAI request bodies -> llama-cpp-python keyword arguments, with 400s that name the field.

Unknown fields are ignored, as OpenAI does; known fields of the wrong type are refused.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequestError

_NUMBER = (int, float)
MAX_CHOICES = 128  # OpenAI's own limit on n

# The inclusive bounds of every bounded option, OpenAI's where OpenAI has the option (min_p is
# llama.cpp's: a share of the most likely token's probability). The checks below and the
# OpenAPI schemas at the end of this module both read them.
BOUNDS: dict[str, tuple[float, float]] = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "min_p": (0, 1),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
    "top_logprobs": (0, 20),  # a chat's alternatives per token
    "completion.logprobs": (0, 5),  # a completion's "logprobs" (the same count; a chat's is a boolean)
    "n": (1, MAX_CHOICES),
}

# An embedding's encodings (OpenAI's): a list of floats, or base64 of little-endian float32.
ENCODING_FORMATS = ("float", "base64")

# The roles a chat message may have (OpenAI's, plus llama-cpp-python's "function").
ROLES = ("system", "developer", "user", "assistant", "tool", "function")

# field -> (accepted types, llama-cpp-python argument); bool is excluded from numbers below.
_SAMPLING: dict[str, tuple[tuple[type, ...], str]] = {
    "temperature": (_NUMBER, "temperature"),
    "top_p": (_NUMBER, "top_p"),
    "top_k": ((int,), "top_k"),
    "min_p": (_NUMBER, "min_p"),
    "seed": ((int,), "seed"),
    "presence_penalty": (_NUMBER, "presence_penalty"),
    "frequency_penalty": (_NUMBER, "frequency_penalty"),
    "repeat_penalty": (_NUMBER, "repeat_penalty"),
    "logit_bias": ((dict,), "logit_bias"),
}


def _bounded(key: str, value: Any, bounds: str | None = None) -> Any:
    """``value`` when it lies within ``BOUNDS[bounds or key]``; else a 400 naming ``key``."""
    low, high = BOUNDS[bounds or key]
    if not low <= value <= high:  # NaN fails too
        raise InvalidRequestError(f"'{key}' must be from {low:g} to {high:g}, not {value!r}", param=key)
    return value


def _as_int(value: Any) -> Any:
    """An integral float (``12.0``, an integer to JSON Schema) as an int; anything else unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _typed(body: dict[str, Any], key: str, types: tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if int in types and float not in types:
        value = _as_int(value)
    if isinstance(value, bool) and bool not in types:
        raise InvalidRequestError(f"'{key}' must be {what}, not a boolean", param=key)
    if not isinstance(value, types):
        raise InvalidRequestError(f"'{key}' must be {what}, not {type(value).__name__}", param=key)
    return value


def _common(body: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, (types, arg) in _SAMPLING.items():
        value = _typed(body, key, types, "a number" if types == _NUMBER else types[0].__name__)
        if value is not None:
            params[arg] = _bounded(key, value) if key in BOUNDS else value
    bias = params.get("logit_bias")
    if bias is not None:
        for token, value in bias.items():
            if not (token.isascii() and token.isdigit()) or isinstance(value, bool) or not isinstance(value, _NUMBER):
                raise InvalidRequestError(
                    "'logit_bias' must map token ids (decimal strings) to numbers", param="logit_bias"
                )
    max_tokens = _as_int(body.get("max_completion_tokens", body.get("max_tokens")))
    if max_tokens is not None:
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidRequestError(f"'{key}' must be a positive integer, not {max_tokens!r}", param=key)
        params["max_tokens"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequestError("'stop' must be a string or a list of strings", param="stop")
        params["stop"] = stop
    n = _typed(body, "n", (int,), "an integer")
    if n is not None:
        _bounded("n", n)
        if n > 1:
            # Choices share the prompt's KV cells and take one slot each: more than the model's
            # max_concurrency is refused by its worker with a 400 that says so.
            params["n"] = n
    return params


def is_stream(body: dict[str, Any]) -> bool:
    value = _typed(body, "stream", (bool,), "a boolean")
    return bool(value)


def include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidRequestError("'stream_options' must be an object", param="stream_options")
    return bool(options.get("include_usage"))


def chat_params(body: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``Llama.create_chat_completion``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty list", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequestError(f"'messages[{i}]' must be an object with a 'role'", param=f"messages[{i}]")
        if m["role"] not in ROLES:
            raise InvalidRequestError(
                f"'messages[{i}].role' must be one of {', '.join(ROLES)}, not {m['role']!r}", param=f"messages[{i}].role"
            )
        content = m.get("content")
        if not (
            content is None
            or isinstance(content, str)
            or (isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in content))
        ):
            raise InvalidRequestError(
                f"'messages[{i}].content' must be a string, null or a list of content parts (objects with a 'type')",
                param=f"messages[{i}].content",
            )
    params = _common(body)
    params["messages"] = messages
    logprobs = _typed(body, "logprobs", (bool,), "a boolean")
    if logprobs:
        params["logprobs"] = True
        top = _typed(body, "top_logprobs", (int,), "an integer")
        if top is not None:
            params["top_logprobs"] = _bounded("top_logprobs", top)
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
            raise InvalidRequestError(
                "'response_format.type' must be one of: text, json_object, json_schema", param="response_format"
            )
        if fmt["type"] == "json_schema":
            # llama-cpp-python takes {"type": "json_object", "schema": ...} for a schema.
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise InvalidRequestError("'response_format.json_schema.schema' must be an object", param="response_format")
            params["response_format"] = {"type": "json_object", "schema": spec["schema"]}
        elif fmt["type"] == "json_object":
            params["response_format"] = {"type": "json_object", **({"schema": fmt["schema"]} if isinstance(fmt.get("schema"), dict) else {})}
    params.update(_tools(body))
    return params


_TOOL_CHOICES = ("none", "auto", "required")


def _function(value: Any, where: str, param: str) -> dict[str, Any]:
    """A function definition with a string name; no ``parameters`` means none, as OpenAI says."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise InvalidRequestError(f"'{where}' must be an object with a string 'name'", param=param)
    parameters = value.get("parameters")
    if parameters is None:
        return {**value, "parameters": {"type": "object", "properties": {}}}
    if not isinstance(parameters, dict):
        raise InvalidRequestError(f"'{where}.parameters' must be an object (a JSON Schema)", param=param)
    return value


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    """tools, tool_choice, functions and function_call, checked so that llama-cpp-python's
    chat handlers (which index into them) never fail on a malformed one."""
    params: dict[str, Any] = {}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequestError("'tools' must be a list", param="tools")
        checked = []
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise InvalidRequestError(f"'tools[{i}]' must be an object with type \"function\"", param="tools")
            checked.append({**tool, "function": _function(tool.get("function"), f"tools[{i}].function", "tools")})
        params["tools"] = checked
    choice = body.get("tool_choice")
    if choice is not None:
        ok = choice in _TOOL_CHOICES if isinstance(choice, str) else (
            isinstance(choice, dict) and isinstance(choice.get("function"), dict) and isinstance(choice["function"].get("name"), str)
        )
        if not ok:
            raise InvalidRequestError(
                "'tool_choice' must be one of none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                param="tool_choice",
            )
        params["tool_choice"] = choice
    parallel = _typed(body, "parallel_tool_calls", (bool,), "a boolean")
    if parallel is not None:
        params["parallel_tool_calls"] = parallel
    functions = body.get("functions")
    if functions is not None:
        if not isinstance(functions, list):
            raise InvalidRequestError("'functions' must be a list", param="functions")
        params["functions"] = [_function(f, f"functions[{i}]", "functions") for i, f in enumerate(functions)]
    call = body.get("function_call")
    if call is not None:
        ok = call in ("none", "auto") if isinstance(call, str) else isinstance(call, dict) and isinstance(call.get("name"), str)
        if not ok:
            raise InvalidRequestError("'function_call' must be none, auto or {\"name\": ...}", param="function_call")
        params["function_call"] = call
    return params


def completion_params(body: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``Llama.create_completion``."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequestError("'prompt' must be a string (or a list of one string)", param="prompt")
    params = _common(body)
    params["prompt"] = prompt
    logprobs = _typed(body, "logprobs", (int,), "an integer")
    if logprobs is not None:
        params["logprobs"] = _bounded("logprobs", logprobs, "completion.logprobs")
    echo = _typed(body, "echo", (bool,), "a boolean")
    if echo is not None:
        params["echo"] = echo
    suffix = _typed(body, "suffix", (str,), "a string")
    if suffix is not None:
        params["suffix"] = suffix
    return params


def embedding_params(body: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``Llama.create_embedding``."""
    value = body.get("input")
    if isinstance(value, str):
        pass
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        pass
    else:
        raise InvalidRequestError("'input' must be a string or a non-empty list of strings", param="input")
    params: dict[str, Any] = {"input": value}
    encoding = _typed(body, "encoding_format", (str,), "a string")
    if encoding is not None:
        if encoding not in ENCODING_FORMATS:
            raise InvalidRequestError(
                f"'encoding_format' must be one of {', '.join(ENCODING_FORMATS)}, not {encoding!r}", param="encoding_format"
            )
        params["encoding_format"] = encoding
    if body.get("dimensions") is not None:
        # OpenAI shortens text-embedding-3 vectors, which were trained for it (Matryoshka); cutting
        # another model's vector changes what it means. No model served here supports it.
        raise InvalidRequestError(
            "'dimensions' is not supported: no model served here can shorten its embeddings "
            "(each gives its full width, n_embd); leave it out",
            param="dimensions",
        )
    return params


# ---------------------------------------------------------------- the request bodies, for OpenAPI
#
# The JSON Schemas the gateway publishes at /openapi.json. They describe what the functions above
# accept (the functions stay the parser: a body is never validated against these schemas, so the
# 400s keep naming the field in our own words). Unknown fields are allowed, as OpenAI allows them.


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _within(schema: dict[str, Any], bounds: str) -> dict[str, Any]:
    low, high = BOUNDS[bounds]
    return {**schema, "minimum": low, "maximum": high}


_NUMBER_SCHEMA = {"type": "number"}

_COMMON_PROPERTIES: dict[str, Any] = {
    "model": {
        "type": "string",
        "description": "A configured model name or alias. Without it: `default_model`, or the only model.",
    },
    "max_tokens": _nullable(
        {
            "type": "integer",
            "minimum": 1,
            "description": (
                "At most this many tokens are generated. A value beyond the room left in the model's "
                "context (n_ctx - prompt tokens) is not an error: generation stops at the end of the "
                "context with finish_reason \"length\". Absent: completions default to 16 tokens, chat "
                "completions run to the end of the context."
            ),
        }
    ),
    "temperature": _nullable(_within(_NUMBER_SCHEMA, "temperature")),
    "top_p": _nullable(_within(_NUMBER_SCHEMA, "top_p")),
    "top_k": _nullable({"type": "integer"}),
    "min_p": _nullable(_within(_NUMBER_SCHEMA, "min_p")),
    "seed": _nullable({"type": "integer"}),
    "presence_penalty": _nullable(_within(_NUMBER_SCHEMA, "presence_penalty")),
    "frequency_penalty": _nullable(_within(_NUMBER_SCHEMA, "frequency_penalty")),
    "repeat_penalty": _nullable(_NUMBER_SCHEMA),
    "logit_bias": _nullable(
        {
            "type": "object",
            "description": "Token id (a decimal string) -> bias added to its logit.",
            "propertyNames": {"pattern": "^[0-9]{1,9}$"},
            "additionalProperties": _NUMBER_SCHEMA,
        }
    ),
    "stop": _nullable({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
    "n": _nullable({**_within({"type": "integer"}, "n"), "description": "Choices to generate; at most the model's max_concurrency (its slots), else 400."}),
    "stream": _nullable({"type": "boolean"}),
    "stream_options": _nullable(
        {"type": "object", "properties": {"include_usage": {"type": "boolean"}}}
    ),
}

_CONTENT_PART = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string"}, "text": {"type": "string"}},
}

_FUNCTION = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "parameters": {"type": "object", "description": "A JSON Schema; absent: no parameters."},
    },
}

CHAT_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        **_COMMON_PROPERTIES,
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role"],
                "properties": {
                    "role": {"type": "string", "enum": list(ROLES)},
                    "content": _nullable({"anyOf": [{"type": "string"}, {"type": "array", "items": _CONTENT_PART}]}),
                    "name": {"type": "string"},
                    "tool_call_id": {"type": "string"},
                    "tool_calls": {"type": "array", "items": {"type": "object"}},
                },
            },
        },
        "max_completion_tokens": _nullable(
            {"type": "integer", "minimum": 1, "description": "Preferred over max_tokens when both are given."}
        ),
        "logprobs": _nullable({"type": "boolean"}),
        "top_logprobs": _nullable(_within({"type": "integer"}, "top_logprobs")),
        "response_format": _nullable(
            {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
                    "json_schema": {
                        "type": "object",
                        "required": ["schema"],
                        "properties": {"name": {"type": "string"}, "schema": {"type": "object"}},
                    },
                    "schema": {"type": "object"},
                },
            }
        ),
        "tools": _nullable(
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "function"],
                    "properties": {"type": {"type": "string", "enum": ["function"]}, "function": _FUNCTION},
                },
            }
        ),
        "tool_choice": _nullable(
            {
                "anyOf": [
                    {"type": "string", "enum": ["none", "auto", "required"]},
                    {
                        "type": "object",
                        "required": ["function"],
                        "properties": {
                            "type": {"type": "string", "enum": ["function"]},
                            "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
                        },
                    },
                ]
            }
        ),
        "parallel_tool_calls": _nullable(
            {"type": "boolean", "description": "Whether one answer may make several calls (default true, where the model's template can)."}
        ),
        "functions": _nullable({"type": "array", "items": _FUNCTION}),
        "function_call": _nullable(
            {
                "anyOf": [
                    {"type": "string", "enum": ["none", "auto"]},
                    {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
                ]
            }
        ),
    },
}

COMPLETION_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        **_COMMON_PROPERTIES,
        "prompt": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
            ],
            "description": "A string, or a list of one string.",
        },
        "logprobs": _nullable(_within({"type": "integer"}, "completion.logprobs")),
        "echo": _nullable({"type": "boolean"}),
        "suffix": _nullable({"type": "string"}),
    },
}

EMBEDDING_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "model": _COMMON_PROPERTIES["model"],
        "input": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ]
        },
        "encoding_format": _nullable({"type": "string", "enum": list(ENCODING_FORMATS)}),
        "dimensions": {"type": "null", "description": "Not supported: no model served here can shorten its embeddings (400)."},
    },
}
