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


class Metered:
    """One forwarded request's ticket and what the client asked for."""

    def __init__(self, ticket: Ticket, stream: bool, include_usage: bool) -> None:
        self.ticket = ticket
        self.stream = stream
        self.include_usage = include_usage
        self.usage: dict[str, Any] | None = None  # the usage the node reported (or the stop's)

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
        usage = doc.get("usage") if isinstance(doc, dict) else None
        if isinstance(usage, dict):
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
                if _is_usage(data):
                    self.usage = data["usage"]
                    self.ticket.settle(self.usage)
                    if self.include_usage:
                        out.append(event)
                    continue
                if not self.ticket.take(generated_tokens(data)):
                    # The key's budget ran out: this event is not sent, the generation stops.
                    out.append(sse(budget_stop_chunk(data, model, self.ticket.budget_note())))
                    sent = self.ticket.charged
                    self.usage = {"prompt_tokens": None, "completion_tokens": sent, "total_tokens": None}
                    if self.include_usage:
                        out.append(sse(usage_chunk(data, model, self.usage)))
                    out.append(SSE_DONE)
                    yield b"".join(out)
                    return
                out.append(event)
            if out:
                yield b"".join(out)
        if pending:
            yield pending


def _data(event: bytes) -> dict[str, Any] | None:
    """An event's JSON object (``data: {...}``); None for [DONE], comments or anything else."""
    if not event.startswith(DATA):
        return None
    try:
        doc = msgspec.json.decode(event[len(DATA) :].strip())
    except msgspec.DecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _is_usage(data: dict[str, Any]) -> bool:
    """The usage chunk of a stream (``choices`` empty, ``usage`` set)."""
    return not data.get("choices") and isinstance(data.get("usage"), dict)
