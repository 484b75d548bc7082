"""The OpenAI Responses API (``POST /v1/responses``) as a translation over chat completions.

Stateless: nothing is stored, so ``store: true``, ``previous_response_id`` and ``conversation``
are refused with a 400 (never ignored). Pure functions, no I/O:

* ``chat_body``: a Responses request body -> a chat completions body (``input`` as a string or
  items: messages, ``function_call`` and ``function_call_output``; ``instructions`` as the system
  message; ``max_output_tokens``; function tools in the Responses shape; ``text.format``), which
  the chat path (gateway.http.openai_params.chat_params) then checks and sends like any chat;
* ``response_object``: a chat completion -> the Response object;
* ``StreamEvents``: chat completion chunks -> the Responses stream's events, one SSE each.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from gateway.engine import options
from gateway.errors import InvalidRequestError
from gateway.http.openai_params import content_text

# Fields a chat body takes under the same name and meaning.
_SAME = ("model", "temperature", "top_p", "stream", "parallel_tool_calls", "seed", "stop")

# The text part types a message item may carry (output_text: an earlier answer in the history).
_TEXT_PARTS = ("input_text", "output_text", "text")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _refuse_state(body: dict[str, Any]) -> None:
    if body.get("store") is True:
        raise InvalidRequestError(
            "'store' must be false or absent: this gateway is stateless and keeps no responses", param="store"
        )
    for field in ("previous_response_id", "conversation"):
        if body.get(field) is not None:
            raise InvalidRequestError(
                f"'{field}' is not supported: this gateway is stateless; send the whole conversation in 'input'",
                param=field,
            )
    if body.get("background") is True:
        raise InvalidRequestError("'background' must be false or absent: responses are not stored", param="background")


def _content(content: Any, where: str) -> str:
    """A message item's content as one string, by the chat messages' rule (its text parts joined)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError(f"'{where}.content' must be a string or a list of content parts", param=where)
    return content_text(content, where, _TEXT_PARTS)


def _messages(items: Any) -> list[dict[str, Any]]:
    """``input`` as chat messages; consecutive function_call items make one assistant turn."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise InvalidRequestError("'input' must be a string or a non-empty list of items", param="input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequestError(f"'{where}' must be an object", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequestError(
                    f"'{where}.role' must be one of user, assistant, system, developer, not {role!r}", param=f"{where}.role"
                )
            messages.append({"role": role, "content": _content(item.get("content"), where)})
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
            if not (isinstance(call_id, str) and isinstance(name, str) and isinstance(arguments, str)):
                raise InvalidRequestError(
                    f"'{where}' (a function_call) must have string 'call_id', 'name' and 'arguments'", param=where
                )
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") and last["content"] is None:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not (isinstance(call_id, str) and isinstance(output, str)):
                raise InvalidRequestError(
                    f"'{where}' (a function_call_output) must have string 'call_id' and 'output'", param=where
                )
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        else:
            raise InvalidRequestError(
                f"'{where}.type' must be one of message, function_call, function_call_output, not {kind!r}",
                param=f"{where}.type",
            )
    return messages


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequestError("'tools' must be a list", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise InvalidRequestError(
                f"'tools[{i}]' must be a function tool ({{\"type\": \"function\", \"name\": ..., \"parameters\": ...}}); "
                f"type {kind!r} is not supported",
                param=f"tools[{i}]",
            )
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequestError(
        "'tool_choice' must be one of none, auto, required or {\"type\": \"function\", \"name\": ...}", param="tool_choice"
    )


def _response_format(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, dict):
        raise InvalidRequestError("'text' must be an object", param="text")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise InvalidRequestError("'text.format.schema' must be an object (a JSON Schema)", param="text.format.schema")
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name", "response"), "schema": fmt["schema"]}}
    raise InvalidRequestError(f"'text.format.type' must be one of text, json_object, json_schema, not {kind!r}", param="text.format")


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body that asks what the Responses ``body`` asks."""
    _refuse_state(body)
    if "input" not in body:
        raise InvalidRequestError("'input' is required: a string or a list of items", param="input")
    messages = _messages(body["input"])
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidRequestError("'instructions' must be a string", param="instructions")
        messages.insert(0, {"role": "system", "content": instructions})
    chat: dict[str, Any] = {k: body[k] for k in _SAME if k in body}
    chat["messages"] = messages
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("tools") is not None:
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("text") is not None:
        fmt = _response_format(body["text"])
        if fmt is not None:
            chat["response_format"] = fmt
    return chat


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {
        "input_tokens": usage.get("prompt_tokens"),
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": usage.get("completion_tokens"),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.get("total_tokens"),
    }


def _echo(body: dict[str, Any]) -> dict[str, Any]:
    """The request's settings, as the Response object repeats them."""
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice", "auto"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "text": body.get("text") or {"format": {"type": "text"}},
        "metadata": body.get("metadata") or {},
        "previous_response_id": None,
        "store": False,
        "truncation": "disabled",
    }


def _shell(response_id: str, created_at: int, model: str, body: dict[str, Any], status: str) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "model": model,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "usage": None,
        **_echo(body),
    }


def _finish(response: dict[str, Any], finish_reason: str | None) -> None:
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    parts = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": parts}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments, "status": status}


def response_object(chat: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The Response object for a whole chat completion ``chat`` (its first choice)."""
    response = _shell(_new_id("resp"), int(chat.get("created") or time.time()), chat.get("model", ""), body, "completed")
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    if message.get("content"):
        response["output"].append(_message_item(_new_id("msg"), message["content"]))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        response["output"].append(
            _call_item(_new_id("fc"), call.get("id") or _new_id("call"), function.get("name", ""), function.get("arguments", ""))
        )
    _finish(response, choice.get("finish_reason"))
    response["usage"] = _usage(chat.get("usage"))
    return response


class StreamEvents:
    """Chat completion chunks in, the Responses stream's server-sent events out.

    ``chunk`` takes each chunk the chat stream would send (and the in-band error body), ``done``
    ends the stream: the open items are closed and ``response.completed`` (or
    ``response.incomplete``) carries the whole Response with its usage. The chat stream is asked
    for its usage chunk (``include_usage``) so that the last event has it.
    """

    def __init__(self, body: dict[str, Any], model: str) -> None:
        self._response = _shell(_new_id("resp"), int(time.time()), model, body, "in_progress")
        self._seq = 0
        self._started = False
        self._failed = False
        self._text: dict[str, Any] | None = None  # the open message item: {"index", "id", "text"}
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> the open call item
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [
            self._event("response.created", response=dict(self._response)),
            self._event("response.in_progress", response=dict(self._response)),
        ]

    def _close_text(self) -> list[bytes]:
        if self._text is None:
            return []
        t, self._text = self._text, None
        part = {"type": "output_text", "text": t["text"], "annotations": []}
        common = {"item_id": t["id"], "output_index": t["index"], "content_index": 0}
        item = _message_item(t["id"], t["text"])
        self._response["output"][t["index"]] = item
        return [
            self._event("response.output_text.done", **common, text=t["text"]),
            self._event("response.content_part.done", **common, part=part),
            self._event("response.output_item.done", output_index=t["index"], item=item),
        ]

    def _close_calls(self) -> list[bytes]:
        events = []
        for call in self._calls.values():
            item = _call_item(call["id"], call["call_id"], call["name"], call["arguments"])
            self._response["output"][call["index"]] = item
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=call["id"],
                    output_index=call["index"],
                    arguments=call["arguments"],
                )
            )
            events.append(self._event("response.output_item.done", output_index=call["index"], item=item))
        self._calls = {}
        return events

    def _add_text(self, delta: str) -> list[bytes]:
        events = []
        if self._text is None:
            index = len(self._response["output"])
            self._text = {"index": index, "id": _new_id("msg"), "text": ""}
            item = _message_item(self._text["id"], "", "in_progress")
            self._response["output"].append(item)
            events.append(self._event("response.output_item.added", output_index=index, item=item))
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=self._text["id"],
                    output_index=index,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": []},
                )
            )
        self._text["text"] += delta
        events.append(
            self._event(
                "response.output_text.delta", item_id=self._text["id"], output_index=self._text["index"], content_index=0, delta=delta
            )
        )
        return events

    def _add_call(self, call: dict[str, Any]) -> list[bytes]:
        events = []
        function = call.get("function") or {}
        key = call.get("index", 0)
        open_call = self._calls.get(key)
        if open_call is None:
            events += self._close_text()  # a call after text: the message item is complete
            index = len(self._response["output"])
            open_call = {
                "index": index,
                "id": _new_id("fc"),
                "call_id": call.get("id") or _new_id("call"),
                "name": function.get("name") or "",
                "arguments": "",
            }
            self._calls[key] = open_call
            item = _call_item(open_call["id"], open_call["call_id"], open_call["name"], "", "in_progress")
            self._response["output"].append(item)
            events.append(self._event("response.output_item.added", output_index=index, item=item))
        arguments = function.get("arguments") or ""
        if arguments:
            open_call["arguments"] += arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta", item_id=open_call["id"], output_index=open_call["index"], delta=arguments
                )
            )
        return events

    def chunk(self, data: dict[str, Any]) -> bytes:
        """The events for one chat chunk (or the in-band error body), as SSE bytes."""
        events = self._start()
        if "error" in data and "choices" not in data:
            self._failed = True
            self._response["status"] = "failed"
            self._response["error"] = {"code": "server_error", "message": (data["error"] or {}).get("message", "")}
            events.append(self._event("response.failed", response=self._response))
            return b"".join(events)
        if data.get("usage"):
            self._usage = data["usage"]
        for choice in data.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # the Responses API has one answer
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._add_text(delta["content"])
            for call in delta.get("tool_calls") or ():
                events += self._add_call(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return b"".join(events)

    def done(self) -> bytes:
        """The stream's last events: the open items closed, then the whole Response."""
        events = self._start()
        if self._failed:
            return b"".join(events)
        events += self._close_text()
        events += self._close_calls()
        _finish(self._response, self._finish_reason)
        self._response["usage"] = _usage(self._usage)
        kind = "response.completed" if self._response["status"] == "completed" else "response.incomplete"
        events.append(self._event(kind, response=self._response))
        return b"".join(events)


# The JSON Schema of the request, published at /openapi.json (gateway.http.openapi). As for the
# chat body (gateway.http.openai_params), the functions above stay the parser.
_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"type": "string", "enum": list(_TEXT_PARTS)}, "text": {"type": "string"}},
}
_INPUT_ITEM = {
    "anyOf": [
        {
            "type": "object",
            "description": "A message (type \"message\", or no type)",
            "required": ["role", "content"],
            "properties": {
                "type": {"type": "string", "enum": ["message"]},
                "role": {"type": "string", "enum": ["user", "assistant", "system", "developer"]},
                "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]},
            },
        },
        {
            "type": "object",
            "description": "A function call the model made earlier",
            "required": ["type", "call_id", "name", "arguments"],
            "properties": {
                "type": {"type": "string", "enum": ["function_call"]},
                "call_id": {"type": "string"},
                "name": {"type": "string"},
                "arguments": {"type": "string"},
            },
        },
        {
            "type": "object",
            "description": "A function call's result",
            "required": ["type", "call_id", "output"],
            "properties": {
                "type": {"type": "string", "enum": ["function_call_output"]},
                "call_id": {"type": "string"},
                "output": {"type": "string"},
            },
        },
    ]
}
REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["input"],
    "description": "Stateless: store true, previous_response_id and conversation are refused (400).",
    "properties": {
        "model": {"type": "string", "description": "A configured model name or alias. Without it: `default_model`, or the only model."},
        "input": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": _INPUT_ITEM}]},
        "instructions": {"type": ["string", "null"], "description": "The system message"},
        # The options a chat body takes as well: their schemas from the one table (gateway.engine.options).
        "max_output_tokens": options.schema("chat")["max_tokens"],
        **{k: options.schema("chat")[k] for k in ("temperature", "top_p", "stream", "parallel_tool_calls")},
        "store": {"type": ["boolean", "null"], "enum": [False, None]},
        "tools": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "name"],
                "properties": {
                    "type": {"type": "string", "enum": ["function"]},
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "parameters": {"type": "object", "description": "A JSON Schema; absent: no parameters."},
                    "strict": {"type": "boolean"},
                },
            },
        },
        "tool_choice": {
            "anyOf": [
                {"type": "string", "enum": ["none", "auto", "required"]},
                {
                    "type": "object",
                    "required": ["type", "name"],
                    "properties": {"type": {"type": "string", "enum": ["function"]}, "name": {"type": "string"}},
                },
            ]
        },
        "text": {
            "type": "object",
            "properties": {
                "format": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {
                        "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
                        "name": {"type": "string"},
                        "schema": {"type": "object"},
                    },
                }
            },
        },
    },
}
