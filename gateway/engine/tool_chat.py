"""Chat completions with tools in the GGUF's own chat template (llama.cpp's ``--jinja``).

The template renders the tools and the history (earlier calls and "tool" messages); the answer
is parsed back into OpenAI ``tool_calls`` by the template's family (gateway.engine.tool_calls).
``tool_choice`` "required" or a named function adds a GBNF grammar of the family's call syntax
around each function's JSON Schema, so the model cannot answer otherwise; "auto" lets it
choose (no grammar: llama.cpp's lazy grammars, which start at a call's opening, are not
offered by the batch engine's samplers); "none" renders no tools at all.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Iterator
from typing import Any

from gateway.engine.schemas import check_schema
from gateway.engine.completion import CompletionOptions, Completions, Started
from gateway.engine.jobs import RequestScope
from gateway.engine.tool_calls import CallRule, Family, Parsed, ToolCall, parse
from gateway.errors import InvalidRequestError

# llama_chat_format's chat handlers' defaults (chat_formatter_to_chat_completion_handler), so a
# chat with tools samples as one without.
_CHAT_DEFAULTS: dict[str, Any] = {
    "temperature": 0.2,
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.05,
    "typical_p": 1.0,
    "repeat_penalty": 1.1,
    "max_tokens": None,
}
# The chat parameters that are completion options under the same name.
_PASSED = (
    "temperature", "top_p", "top_k", "min_p", "typical_p", "seed", "max_tokens", "presence_penalty",
    "frequency_penalty", "repeat_penalty", "tfs_z", "mirostat_mode", "mirostat_tau", "mirostat_eta",
    "logit_bias", "model",
)
# Asked for alongside tools, these would be ignored: refused instead.
_NOT_WITH_TOOLS = ("response_format", "functions", "function_call", "logprobs", "top_logprobs", "grammar", "logits_processor")
_ID_ALPHABET = string.ascii_letters + string.digits


def call_id(family: Family) -> str:
    """A new call id; Mistral's templates accept only 9 letters and digits."""
    if family.name == "mistral":
        return "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def named_tool(tools: list[dict[str, Any]], choice: Any) -> dict[str, Any] | None:
    """The tool a named ``tool_choice`` picks; None for a string choice."""
    if not isinstance(choice, dict):
        return None
    name = choice["function"]["name"]
    for tool in tools:
        if tool["function"]["name"] == name:
            return tool
    raise InvalidRequestError(f"'tool_choice' names function {name!r}, which is not one of 'tools'", param="tool_choice")


def tools_grammar(family: Family, tools: list[dict[str, Any]], parallel: bool, prompt: str) -> str:
    """GBNF that lets the model write only calls of ``tools`` in ``family``'s syntax, each
    function's arguments following its JSON Schema."""
    from llama_cpp.llama_grammar import SchemaConverter

    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    rules = []
    for i, tool in enumerate(tools):
        schema = tool["function"]["parameters"]
        where = f"tools[{i}].function.parameters"
        check_schema(schema, where=where, param="tools")
        try:
            resolved = converter.resolve_refs(schema, f"tool-{i}")
            rule = converter.visit(resolved, f"tool-{i}-arguments")
        except Exception as exc:  # noqa: BLE001 - the converter reports a bad schema with asserts, KeyError...
            raise InvalidRequestError(f"'{where}' is not a JSON Schema that can be followed: {type(exc).__name__}: {exc}", param="tools") from None
        rules.append(CallRule(tool["function"]["name"], rule))
    return converter.format_grammar() + "\nroot ::= " + family.grammar(rules, parallel, prompt) + "\n"


def template_messages(messages: list[dict[str, Any]], family: Family) -> list[dict[str, Any]]:
    """The history as templates expect it: an assistant's earlier calls with their arguments as
    objects where the template writes them with ``tojson``, and no empty ``tool_calls``."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if "tool_calls" in message and not calls:
            message = {k: v for k, v in message.items() if k != "tool_calls"}
        elif calls and family.object_arguments:
            message = {**message, "tool_calls": [_object_arguments(c) for c in calls]}
        out.append(message)
    return out


def _object_arguments(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except json.JSONDecodeError:
        return call  # the template gets the text as it came
    return {**call, "function": {**function, "arguments": arguments}}


class ToolChat:
    """One chat completion with tools, in a GGUF template of a known family."""

    def __init__(self, completions: Completions, formatter: Any, family: Family) -> None:
        self.completions = completions
        self.formatter = formatter
        self.family = family

    def create(self, scope: RequestScope, params: dict[str, Any], stream: bool) -> dict[str, Any] | Iterator[dict[str, Any]]:
        params = dict(params)
        for key in _NOT_WITH_TOOLS:
            if params.get(key) not in (None, False):
                raise InvalidRequestError(f"'{key}' cannot be combined with 'tools' (with this model's chat template)", param=key)
        tools: list[dict[str, Any]] = params.pop("tools")
        choice = params.pop("tool_choice", None) or "auto"
        parallel = params.pop("parallel_tool_calls", None)
        parallel = self.family.parallel if parallel is None else bool(parallel) and self.family.parallel
        named = named_tool(tools, choice)
        messages = template_messages(params.pop("messages"), self.family)
        try:
            rendered = self.formatter(messages=messages, tools=tools, tool_choice=choice)
        except ValueError as exc:  # the template's raise_exception: the history does not fit it
            raise InvalidRequestError(f"the model's chat template refused the messages: {exc}", param="messages") from None
        prompt = rendered.prompt
        tokens = self.completions.vocab.tokenize(prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)
        stop = params.pop("stop", None)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if rendered.stop is not None:
            stops += rendered.stop if isinstance(rendered.stop, list) else [rendered.stop]
        grammar = None
        if named is not None or choice == "required":
            grammar = tools_grammar(self.family, [named] if named is not None else tools, parallel and named is None, prompt)
        options = {**_CHAT_DEFAULTS, **{k: params[k] for k in _PASSED if params.get(k) is not None}}
        started = self.completions.start(
            scope,
            CompletionOptions(prompt=tokens, stop=stops, stopping_criteria=rendered.stopping_criteria, grammar=grammar, **options),
        )
        answer = _Answer(self.family, started, parallel)
        if stream:
            return answer.chunks(self.completions.stream(started))
        return answer.response(self.completions.result(started))


class _Answer:
    """One answer's text as OpenAI chat shapes."""

    def __init__(self, family: Family, started: Started, parallel: bool) -> None:
        self.family = family
        self.parallel = parallel
        self.id = "chat" + started.completion_id
        self.created = started.created
        self.model = started.model_name
        self.ids: list[str] = []

    def _calls(self, parsed: Parsed) -> tuple[ToolCall, ...]:
        return parsed.calls if self.parallel else parsed.calls[:1]

    def _id(self, k: int, call: ToolCall) -> str:
        while len(self.ids) <= k:
            self.ids.append(call.id or call_id(self.family))
        return self.ids[k]

    def _finish(self, parsed: Parsed, reason: str | None) -> str | None:
        return "tool_calls" if self._calls(parsed) and reason == "stop" else reason

    def response(self, completion: dict[str, Any]) -> dict[str, Any]:
        choice = completion["choices"][0]
        parsed = parse(self.family, choice["text"], final=True)
        calls = self._calls(parsed)
        message: dict[str, Any] = {"role": "assistant", "content": parsed.content if parsed.content.strip() or not calls else None}
        if calls:
            message["tool_calls"] = [
                {"id": self._id(k, c), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for k, c in enumerate(calls)
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self._finish(parsed, choice["finish_reason"])}],
            "usage": completion["usage"],
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def _call_deltas(self, calls: tuple[ToolCall, ...], start: int) -> Iterator[dict[str, Any]]:
        """Each new call as OpenAI streams one: its id and name first, then its arguments."""
        for k in range(start, len(calls)):
            call = calls[k]
            head = {"index": k, "id": self._id(k, call), "type": "function", "function": {"name": call.name, "arguments": ""}}
            yield self._chunk({"tool_calls": [head]})
            yield self._chunk({"tool_calls": [{"index": k, "function": {"arguments": call.arguments}}]})

    def chunks(self, completion_chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        text = ""
        shown = ""  # the content sent so far
        sent_calls = 0
        yield self._chunk({"role": "assistant"})
        try:
            for chunk in completion_chunks:
                choice = chunk["choices"][0]
                text += choice["text"]
                reason = choice["finish_reason"]
                parsed = parse(self.family, text, final=reason is not None)
                calls = self._calls(parsed)
                # Parsing the longer text only extends the content (gateway.engine.tool_calls.Parsed).
                if len(parsed.content) > len(shown) and parsed.content.startswith(shown):
                    yield self._chunk({"content": parsed.content[len(shown):]})
                    shown = parsed.content
                yield from self._call_deltas(calls, sent_calls)
                sent_calls = max(sent_calls, len(calls))
                if reason is not None:
                    yield self._chunk({}, self._finish(parsed, reason))
        finally:
            close = getattr(completion_chunks, "close", None)
            if close is not None:
                close()  # a consumer that left cancels the generation
