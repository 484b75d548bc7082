"""OpenAI request bodies -> llama-cpp-python keyword arguments, with 400s that name the field.

Unknown fields are ignored, as OpenAI does; known fields of the wrong type are refused.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequestError

_NUMBER = (int, float)

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


def _typed(body: dict[str, Any], key: str, types: tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
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
            params[arg] = value
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
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
    n = body.get("n")
    if n not in (None, 1):
        raise InvalidRequestError("only n = 1 is supported", param="n")
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
    params = _common(body)
    params["messages"] = messages
    logprobs = _typed(body, "logprobs", (bool,), "a boolean")
    if logprobs:
        params["logprobs"] = True
        top = _typed(body, "top_logprobs", (int,), "an integer")
        if top is not None:
            params["top_logprobs"] = top
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
    for key in ("tools", "tool_choice", "functions", "function_call"):
        if body.get(key) is not None:
            params[key] = body[key]
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
    logprobs = body.get("logprobs")
    if logprobs is not None:
        if isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0:
            raise InvalidRequestError("'logprobs' must be a non-negative integer", param="logprobs")
        params["logprobs"] = logprobs
    for key in ("echo", "suffix"):
        if body.get(key) is not None:
            params[key] = body[key]
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
    return {"input": value}
