"""OpenAI request bodies -> llama-cpp-python keyword arguments, with 400s that name the field.

Unknown fields are ignored, as OpenAI does; known fields of the wrong type are refused. The
options (sampling, max_tokens, stop, n, logprobs...) are declared once in
gateway.engine.options, which checks them and describes them for OpenAPI; this module checks the
payloads (messages, prompt, input, tools, response_format) and puts each body together.
"""

from __future__ import annotations

from typing import Any

from gateway.engine import options
from gateway.errors import InvalidRequestError

# The roles a chat message may have (OpenAI's, plus llama-cpp-python's "function").
ROLES = ("system", "developer", "user", "assistant", "tool", "function")

# The content part types that carry a chat message's text (OpenAI's; the Responses API has its own,
# gateway.http.responses).
CHAT_TEXT_PARTS = ("text",)


def is_stream(body: dict[str, Any]) -> bool:
    return bool(options.option("stream", "chat").check(body.get("stream")))


def include_usage(body: dict[str, Any]) -> bool:
    stream_options = options.option("stream_options", "chat").check(body.get("stream_options"))
    return bool(stream_options and stream_options.get("include_usage"))


def content_text(parts: list[Any], where: str, text_types: tuple[str, ...] = CHAT_TEXT_PARTS) -> str:
    """A message's list of content parts as the one string every chat path takes: the text
    parts joined with newlines, as llama.cpp's server flattens them. A GGUF's Jinja template
    adds content to strings (a list failed there with a 500) and llama-cpp-python's built-in
    formats drop a content that is not a string, so no list goes further than here. ``where``
    names the message ("messages[0]", a Responses "input[0]"); any other part (an image, audio,
    a file) is a 400 naming it: no model served here reads them (a worker loads no vision
    projector), and dropping them would answer another question than the one asked."""
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in text_types and isinstance(part.get("text"), str):
            texts.append(part["text"])
            continue
        field = f"{where}.content[{j}]"
        if kind in text_types:
            raise InvalidRequestError(f"'{field}' (a {kind!r} part) must have a string 'text'", param=field)
        if not isinstance(kind, str):
            raise InvalidRequestError(f"'{field}' must be a content part: an object with a 'type'", param=field)
        raise InvalidRequestError(
            f"'{field}' is a {kind!r} part: this model reads text only (no model served here has vision or audio); "
            f"send parts of type {', '.join(text_types)} with a string 'text'",
            param=field,
        )
    return "\n".join(texts)


def chat_params(body: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``Llama.create_chat_completion``; a message's content parts become
    one string (``content_text``)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty list", param="messages")
    checked: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequestError(f"'messages[{i}]' must be an object with a 'role'", param=f"messages[{i}]")
        if m["role"] not in ROLES:
            raise InvalidRequestError(
                f"'messages[{i}].role' must be one of {', '.join(ROLES)}, not {m['role']!r}", param=f"messages[{i}].role"
            )
        content = m.get("content")
        if isinstance(content, list):
            m = {**m, "content": content_text(content, f"messages[{i}]")}
        elif not (content is None or isinstance(content, str)):
            raise InvalidRequestError(
                f"'messages[{i}].content' must be a string, null or a list of content parts (objects with a 'type')",
                param=f"messages[{i}].content",
            )
        checked.append(m)
    params = options.parse("chat", body)
    params["messages"] = checked
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
    params = options.parse("completion", body)
    params["prompt"] = prompt
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
    params = options.parse("embedding", body)
    params["input"] = value
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


_MODEL = {
    "type": "string",
    "description": "A configured model name or alias. Without it: `default_model`, or the only model.",
}

_CONTENT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "description": "A text part; the parts of a message are joined with newlines. Other parts (images, audio) are refused (400).",
    "properties": {"type": {"type": "string", "enum": list(CHAT_TEXT_PARTS)}, "text": {"type": "string"}},
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
        "model": _MODEL,
        **options.schema("chat"),
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
        "model": _MODEL,
        **options.schema("completion"),
        "prompt": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
            ],
            "description": "A string, or a list of one string.",
        },
    },
}

EMBEDDING_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "model": _MODEL,
        "input": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ]
        },
        **options.schema("embedding"),
        "dimensions": {"type": "null", "description": "Not supported: no model served here can shorten its embeddings (400)."},
    },
}
