"""A request's API key through the router: its ticket charged with what the node reports.

The router checks clients' keys with the gateway's own machinery (gateway.access: scopes,
limits, usage; gateway.http.auth: the guards) and calls the nodes with the internal key, so the
key's tokens are counted here, from the node's answers, as a gateway counts them from its
worker's:

- a whole answer: its ``usage`` at the end;
- a stream: each chunk's tokens as it passes (``Ticket.take``) and the usage chunk at the end.
  So that the usage chunk comes (a node sends it on request only), a keyed stream is forwarded
  with ``stream_options.include_usage`` set, and the usage chunk is dropped again when the client
  did not ask for it. When the key's ``tokens_per_minute`` runs out, the stream ends as on a
  gateway (finish_reason "length" and a ``note``) and the connection to the node is closed,
  which stops the generation there; the node's prompt tokens for it are then unknown here.

The Responses API (``/v1/responses``) is metered the same way on its own shapes (``RESPONSES``):
its usage is ``input_tokens``/``output_tokens`` (read as the chat usage's prompt and completion
tokens), a stream's tokens are its ``response.output_text.delta`` and
``response.function_call_arguments.delta`` events, and its usage comes in the last event
(``response.completed`` or ``response.incomplete``), which a node always sends, so nothing is
asked for or dropped. A budget that runs out ends that stream as the node ends one at
``max_output_tokens``: the open output items closed with what was sent of them, then
``response.incomplete`` (reason ``max_output_tokens``, and the ``note``) whose Response holds them.

Without a key (a router without keys) nothing is parsed: bytes go through as they come.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from gateway.access.limits import Ticket
from gateway.http.proxy import SSE_DONE, budget_stop_chunk, generated_tokens, sse, usage_chunk

EVENT_END = b"\n\n"
DATA = b"data: "


class Chat:
    """The chat and text completions (and embeddings) shapes: ``usage`` as it is, a stream of
    ``data:`` chunks whose usage chunk comes on request (``stream_options.include_usage``)."""

    usage_on_request = True

    def usage(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        """A whole answer's usage, in the chat shape (prompt_tokens, completion_tokens, total_tokens)."""
        usage = doc.get("usage")
        return usage if isinstance(usage, dict) else None

    def stream_usage(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """The usage a stream event reports (the usage chunk: ``choices`` empty, ``usage`` set)."""
        return data["usage"] if not data.get("choices") and isinstance(data.get("usage"), dict) else None

    def tokens(self, data: dict[str, Any]) -> int:
        return generated_tokens(data)

    def sent(self, data: dict[str, Any]) -> None:
        """An event the client got (a chat stream needs no memory of them)."""

    def stop(self, data: dict[str, Any], model: str, note: str, usage: dict[str, Any], include_usage: bool) -> bytes:
        """The events that end a stream whose key ran out of tokens at event ``data``."""
        out = [sse(budget_stop_chunk(data, model, note))]
        if include_usage:
            out.append(sse(usage_chunk(data, model, usage)))
        out.append(SSE_DONE)
        return b"".join(out)


# The Responses stream's events that carry one generated token, and those that end it (with the
# whole Response, its usage included: gateway.http.responses.StreamEvents).
_TOKEN_EVENTS = ("response.output_text.delta", "response.function_call_arguments.delta")
_LAST_EVENTS = ("response.completed", "response.incomplete")


class Responses:
    """The Responses API's shapes: ``usage`` with ``input_tokens``/``output_tokens``, a stream of
    typed events whose last one carries the Response and its usage (always sent)."""

    usage_on_request = False

    def __init__(self) -> None:
        self._response: dict[str, Any] | None = None  # the stream's Response, as last sent
        # The output items the client got, by output_index, with their text or arguments so far;
        # those not closed yet (no output_item.done) are closed by ``stop``.
        self._items: dict[int, dict[str, Any]] = {}
        self._open: set[int] = set()

    def usage(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        usage = doc.get("usage")
        if not isinstance(usage, dict):
            return None
        return {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens"), "total_tokens": usage.get("total_tokens")}

    def stream_usage(self, data: dict[str, Any]) -> dict[str, Any] | None:
        response = data.get("response")
        if isinstance(response, dict):
            self._response = response
        if data.get("type") in _LAST_EVENTS and isinstance(response, dict):
            return self.usage(response)
        return None

    def tokens(self, data: dict[str, Any]) -> int:
        return 1 if data.get("type") in _TOKEN_EVENTS else 0

    def sent(self, data: dict[str, Any]) -> None:
        """Keep what an event the client got adds to the output (gateway.http.responses.StreamEvents
        makes these events on the node)."""
        kind, index = data.get("type"), data.get("output_index")
        if not isinstance(index, int):
            return
        if kind == "response.output_item.added" and isinstance(data.get("item"), dict):
            self._items[index] = {**data["item"], "text": ""}
            self._open.add(index)
        elif kind == "response.output_item.done" and isinstance(data.get("item"), dict):
            self._items[index] = data["item"]
            self._open.discard(index)
        elif index in self._open and isinstance(data.get("delta"), str):
            item = self._items[index]
            if kind == "response.output_text.delta":
                item["text"] += data["delta"]
            elif kind == "response.function_call_arguments.delta":
                item["arguments"] = item.get("arguments", "") + data["delta"]

    def stop(self, data: dict[str, Any], model: str, note: str, usage: dict[str, Any], include_usage: bool) -> bytes:
        """The open output items closed with what the client got of them, then
        ``response.incomplete`` (as at max_output_tokens) with the ``note``: its Response holds
        every output item sent, as the node's own would."""
        sequence = data.get("sequence_number")
        seq = sequence if isinstance(sequence, int) else 0
        out: list[bytes] = []

        def event(kind: str, **fields: Any) -> None:
            nonlocal seq
            out.append(b"event: " + kind.encode() + b"\n" + sse({"type": kind, "sequence_number": seq, **fields}))
            seq += 1

        for index in sorted(self._open):
            item = self._items[index]
            text = item.pop("text", "")
            if item.get("type") == "message":
                part = {"type": "output_text", "text": text, "annotations": []}
                common = {"item_id": item.get("id"), "output_index": index, "content_index": 0}
                event("response.output_text.done", **common, text=text)
                event("response.content_part.done", **common, part=part)
                item["content"] = [part]
            elif item.get("type") == "function_call":
                event("response.function_call_arguments.done", item_id=item.get("id"), output_index=index, arguments=item.get("arguments", ""))
            item["status"] = "incomplete"
            event("response.output_item.done", output_index=index, item=item)
        response = {
            **(self._response or {"object": "response", "model": model}),
            "output": [self._items[i] for i in sorted(self._items)],
            "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"},
            "usage": {"input_tokens": usage.get("prompt_tokens"), "output_tokens": usage.get("completion_tokens"), "total_tokens": usage.get("total_tokens")},
        }
        event("response.incomplete", response=response, note=note)
        return b"".join(out)


Shape = Chat | Responses

# The endpoints whose answers are not in the chat shapes.
RESPONSES_PATH = "/v1/responses"


def shape_of(path: str) -> Shape:
    """The shapes of an endpoint's answers (a new one per request: a Responses stream keeps its Response)."""
    return Responses() if path == RESPONSES_PATH else Chat()


class Metered:
    """One forwarded request's ticket and what the client asked for."""

    def __init__(self, ticket: Ticket, stream: bool, include_usage: bool, shape: Shape | None = None) -> None:
        self.ticket = ticket
        self.stream = stream
        self.shape = shape or Chat()
        # A Responses stream always ends with its usage: the client asked for it.
        self.include_usage = include_usage or not self.shape.usage_on_request
        self.usage: dict[str, Any] | None = None  # the usage the node reported (or the stop's), chat-shaped

    @property
    def key(self) -> str | None:
        return self.ticket.key.name if self.ticket.key is not None else None

    def body(self, raw: bytes) -> bytes:
        """The body for the node: the client's, with include_usage asked for a keyed stream."""
        if self.ticket.key is None or not self.stream or self.include_usage:
            return raw
        doc = msgspec.json.decode(raw)
        options = doc.get("stream_options")
        doc["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return msgspec.json.encode(doc)

    def whole(self, status: int, body: bytes) -> None:
        """A whole answer from a node: charge its usage."""
        if self.ticket.key is None or status != 200:
            return
        try:
            doc = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return
        usage = self.shape.usage(doc) if isinstance(doc, dict) else None
        if usage is not None:
            self.usage = usage
            self.ticket.settle(usage)

    async def relay(self, chunks: AsyncIterator[bytes], model: str) -> AsyncIterator[bytes]:
        """A node's event stream to the client, each event charged to the key; ends early (and
        the caller closes the node's answer) when the key's token budget runs out."""
        if self.ticket.key is None:
            async for chunk in chunks:
                yield chunk
            return
        pending = b""
        async for chunk in chunks:
            pending += chunk
            out = []
            while (end := pending.find(EVENT_END)) >= 0:
                event, pending = pending[: end + len(EVENT_END)], pending[end + len(EVENT_END) :]
                data = _data(event)
                if data is None:
                    out.append(event)
                    continue
                usage = self.shape.stream_usage(data)
                if usage is not None:
                    self.usage = usage
                    self.ticket.settle(self.usage)
                    if self.include_usage:
                        out.append(event)
                    continue
                if not self.ticket.take(self.shape.tokens(data)):
                    # The key's budget ran out: this event is not sent, the generation stops.
                    sent = self.ticket.charged
                    self.usage = {"prompt_tokens": None, "completion_tokens": sent, "total_tokens": None}
                    out.append(self.shape.stop(data, model, self.ticket.budget_note(), self.usage, self.include_usage))
                    yield b"".join(out)
                    return
                self.shape.sent(data)
                out.append(event)
            if out:
                yield b"".join(out)
        if pending:
            yield pending


def _data(event: bytes) -> dict[str, Any] | None:
    """An event's JSON object (its ``data: {...}`` line, after an ``event:`` line for the
    Responses stream); None for [DONE], comments or anything else."""
    line = next((line for line in event.split(b"\n") if line.startswith(DATA)), None)
    if line is None:
        return None
    try:
        doc = msgspec.json.decode(line[len(DATA) :].strip())
    except msgspec.DecodeError:
        return None
    return doc if isinstance(doc, dict) else None
