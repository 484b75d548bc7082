"""One OpenAI request through a model's worker: a whole response, or a server-sent event stream.

The lease (a run slot on a ready worker, from the pool) is held until the response's last byte;
a client that goes away cancels the generation in the worker, which stops it at its next decode
step: a stream is closed by Litestar then, and a whole response watches for the ASGI
``http.disconnect`` while it waits (``client_gone``; issue 21, item 6: a non-streamed request
kept its slot until its last token after its client had left). So is the
key's ticket (gateway.access.limits): a whole response charges its usage at the end; a stream
charges each token as it passes and, when the key's tokens_per_minute runs out, ends as
max_tokens would (finish_reason "length") with a ``note`` saying why, instead of being cut off;
its usage then counts the tokens sent and the prompt's, which the cancelled worker reports.

It reads the worker's replies as the protocol's Structs (gateway.runtime.requests), never the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import msgspec
from litestar import Request, Response
from litestar.response import Stream

from gateway.access.limits import Ticket
from gateway.engine.protocol import Chunk, End, Error, Op, Result, Timings
from gateway.errors import EngineError
from gateway.http.errors import error_body, worker_error
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.telemetry import REQUEST_ID_HEADER, RequestRecord
from gateway.runtime.pool import Lease
from gateway.runtime.requests import TERMINAL, Reply, RequestStream, Terminal, WorkerExited

SSE_DONE = b"data: [DONE]\n\n"
END_AFTER_CANCEL_S = 2.0  # how long a stopped stream waits for the worker's "end" (its usage)
CLIENT_CLOSED = 499  # nginx's "client closed request", for the metrics and the log

T = TypeVar("T")
Disconnected = Callable[[], Awaitable[None]]


def client_gone(request: Request) -> Disconnected:
    """Waits until the client disconnects (the ASGI ``http.disconnect``); for a request whose
    body was read, so that nothing else receives from it."""

    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait


def sse(data: Any) -> bytes:
    return b"data: " + msgspec.json.encode(data) + b"\n\n"


class Framing(Protocol):
    """How a stream's events are written: each chunk (or in-band error body), then its end."""

    def chunk(self, data: dict[str, Any]) -> bytes: ...

    def done(self) -> bytes: ...


class ChunkFraming:
    """The chat and text completions stream: a ``data:`` line per chunk, then ``[DONE]``."""

    def chunk(self, data: dict[str, Any]) -> bytes:
        return sse(data)

    def done(self) -> bytes:
        return SSE_DONE


def _ttft(record: RequestRecord, sent_at: float, timings: Timings) -> float | None:
    """Time to first token from the request's arrival: the gateway's part plus the worker's."""
    if timings.ttft_s is None:
        return None
    return (sent_at - record.started) + timings.ttft_s


async def whole(
    lease: Lease,
    record: RequestRecord,
    metrics: GatewayMetrics,
    op: Op,
    params: dict[str, Any],
    ticket: Ticket | None = None,
    disconnected: Disconnected | None = None,
    shape: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Response:
    """A non-streamed request; the lease and the ticket are released when it returns. When
    ``disconnected`` returns first, the generation is cancelled and its usage so far charged.
    ``shape`` rewrites the result's body (the Responses API's object from a chat completion)."""
    ticket = ticket or Ticket(None, None, time.monotonic)
    try:
        async with lease:
            sent_at = time.monotonic()
            messages = lease.request(op, params, stream=False)
            try:
                reply = await unless_disconnected(_answer(messages, lease.name), disconnected)
                if reply is None:  # the client left
                    usage = await _end_after_cancel(messages)
                    ticket.settle(usage)
                    record.finish(metrics, CLIENT_CLOSED, usage=usage)
                    return Response(content=b"", status_code=CLIENT_CLOSED)
            finally:
                await messages.aclose()
            if isinstance(reply, Result):
                data = reply.data
                data["model"] = lease.name
                usage = reply.usage or data.get("usage")
                if op is not Op.EMBEDDING:
                    _add_cache_and_timings(data, reply.timings)
                ticket.settle(usage)
                record.finish(metrics, 200, ttft_s=_ttft(record, sent_at, reply.timings), usage=usage)
                headers = {REQUEST_ID_HEADER: record.request_id, **ticket.headers()}
                if shape is not None:
                    data = shape(data)
                return Response(content=data, status_code=200, headers=headers)
            if isinstance(reply, (Error, WorkerExited)):
                raise worker_error(reply, lease.name)
        raise EngineError(f"model {lease.name!r}: no result from the worker")  # an End without one
    finally:
        ticket.release()


async def _answer(messages: RequestStream, name: str) -> Terminal:
    """A whole response's terminal reply (its result, or an error; an End without one)."""
    async for reply in messages:
        if isinstance(reply, TERMINAL):
            return reply
    raise EngineError(f"model {name!r}: no result from the worker")


async def unless_disconnected(work: Awaitable[T], disconnected: Disconnected | None) -> T | None:
    """``work``'s result, or None when ``disconnected`` returns first (``work`` is cancelled).
    Also the router's, for a whole answer it waits on from a node."""
    if disconnected is None:
        return await work
    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
        return task.result() if task.done() else None
    finally:
        for pending in (task, watch):
            pending.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)


async def _end_after_cancel(messages: RequestStream) -> dict[str, Any] | None:
    """Cancel a generation whose client left, and read on to its End for the usage so far."""
    messages.cancel()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(END_AFTER_CANCEL_S):
            async for reply in messages:
                if isinstance(reply, (Result, End)):
                    return reply.usage
                if isinstance(reply, (Error, WorkerExited)):
                    return None
    return None


async def streamed(
    lease: Lease,
    record: RequestRecord,
    metrics: GatewayMetrics,
    op: Op,
    params: dict[str, Any],
    include_usage: bool,
    ticket: Ticket | None = None,
    frame: Framing | None = None,
) -> Stream:
    """A streamed request; the lease and the ticket pass to the stream, which releases them at its end.
    ``frame`` writes the events (the chat/completions chunks as they are, by default)."""
    ticket = ticket or Ticket(None, None, time.monotonic)
    frame = frame or ChunkFraming()
    messages = lease.request(op, params, stream=True)
    try:
        # Pull the first message before answering, so an early error still gets its real status.
        first = await anext(messages)
        if isinstance(first, (Error, WorkerExited)):
            raise worker_error(first, lease.name)
    except BaseException:
        await messages.aclose()
        await lease.release()
        ticket.release()
        raise
    ttft = time.monotonic() - record.started

    async def events() -> AsyncIterator[bytes]:
        last: dict[str, Any] | None = None
        # A chunk that ends a choice waits for the next message: when that is the stream's
        # "end", the stream's last chunk carries the timings (llama-server's place for them).
        held: dict[str, Any] | None = None
        # A client that goes away is recorded as 499 (nginx's "client closed request").
        status, end_usage = 499, None
        error: str | None = None  # the in-band error's text, for the page's last error
        # The events made from the replies that have arrived, written together when the next
        # reply has yet to come: one write (an ASGI message, a wake of this task) per batch of
        # replies, not one per chunk, when the stream is behind its worker.
        out: list[bytes] = []
        try:
            reply: Reply | None = first
            while reply is not None:
                if isinstance(reply, Chunk):
                    data = reply.data
                    data["model"] = lease.name
                    if held is not None:
                        out.append(frame.chunk(held))
                        held = None
                    if not ticket.take(generated_tokens(data)):
                        # The key's budget ran out: this token is not sent, the generation stops.
                        out.append(frame.chunk(budget_stop_chunk(data, lease.name, ticket.budget_note())))
                        yield _joined(out)
                        end_usage = await _usage_after_cancel(messages, ticket.charged)
                        ticket.settle(end_usage)
                        if include_usage:
                            out.append(frame.chunk(usage_chunk(data, lease.name, end_usage)))
                        status = 200
                        break
                    last = data
                    if any(c.get("finish_reason") for c in data.get("choices") or ()):
                        held = data
                    else:
                        out.append(frame.chunk(data))
                elif isinstance(reply, End):
                    end_usage = reply.usage
                    ticket.settle(end_usage)
                    timings = llama_timings(reply.timings)
                    if include_usage:
                        if held is not None:
                            out.append(frame.chunk(held))
                            held = None
                        chunk = usage_chunk(last, lease.name, with_cached_tokens(end_usage, reply.timings))
                        out.append(frame.chunk({**chunk, "timings": timings}))
                    elif held is not None:
                        out.append(frame.chunk({**held, "timings": timings}))
                        held = None
                    status = 200
                    break
                elif isinstance(reply, (Error, WorkerExited)):
                    if held is not None:
                        out.append(frame.chunk(held))
                        held = None
                    # Headers are gone: report in-band, as OpenAI does, then end the stream.
                    out.append(frame.chunk(error_body(reply.message, "server_error")))
                    status = 500
                    error = reply.message
                    break
                reply = messages.ready()
                if reply is None:
                    if out:
                        yield _joined(out)
                    reply = await anext(messages, None)
            if held is not None:  # the worker's messages ended without an "end"
                out.append(frame.chunk(held))
            out.append(frame.done())
            yield _joined(out)
        finally:
            record.finish(metrics, status, ttft_s=ttft, usage=end_usage, error=error)
            await messages.aclose()
            await lease.release()
            ticket.release()

    return Stream(
        events(),
        media_type="text/event-stream",
        headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            REQUEST_ID_HEADER: record.request_id,
            **ticket.headers(),
        },
    )


def _joined(out: list[bytes]) -> bytes:
    """The events in ``out`` as one write; ``out`` is emptied."""
    data = out[0] if len(out) == 1 else b"".join(out)
    out.clear()
    return data


async def _usage_after_cancel(messages: RequestStream, sent: int) -> dict[str, Any]:
    """A stream stopped by the gateway: cancel the generation and read on to its "end" for the
    prompt's tokens; its completion tokens are the ``sent`` ones (what the client got)."""
    messages.cancel()
    prompt = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(END_AFTER_CANCEL_S):
            async for reply in messages:
                if isinstance(reply, End):
                    prompt = reply.usage.get("prompt_tokens")
                    break
                if isinstance(reply, (Error, WorkerExited)):
                    break
    if not isinstance(prompt, int):
        # No end in time (a worker that is stuck or gone): the usage says what is known.
        return {"prompt_tokens": None, "completion_tokens": sent, "total_tokens": None}
    return {"prompt_tokens": prompt, "completion_tokens": sent, "total_tokens": prompt + sent}


def llama_timings(timings: Timings) -> dict[str, Any]:
    """llama-server's ``timings`` from the worker's (gateway.engine.protocol): the prompt tokens
    read (``prompt_n``, the cached ones are ``cache_n``) and the time from taking a slot to the
    first token; the tokens generated (``predicted_n``) and the time from the first to the last."""
    cached = timings.cached_prompt_tokens
    prompt_n = max(0, timings.prompt_tokens - cached)
    predicted_n = timings.completion_tokens
    prompt_ms = round(timings.prompt_s * 1000, 3) if timings.prompt_s is not None else None
    predicted_ms = round(timings.decode_s * 1000, 3)

    def per_token(n: int, ms: float | None) -> float | None:
        return round(ms / n, 3) if ms is not None and n else None

    def per_second(n: int, ms: float | None) -> float | None:
        return round(n * 1000 / ms, 3) if ms and n else None

    return {
        "cache_n": cached,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": per_token(prompt_n, prompt_ms),
        "prompt_per_second": per_second(prompt_n, prompt_ms),
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": per_token(predicted_n, predicted_ms),
        "predicted_per_second": per_second(predicted_n, predicted_ms),
    }


def with_cached_tokens(usage: dict[str, Any], timings: Timings) -> dict[str, Any]:
    """OpenAI's usage with ``prompt_tokens_details.cached_tokens``: the prompt tokens a slot's
    prompt cache held (not decoded again)."""
    return {**usage, "prompt_tokens_details": {"cached_tokens": timings.cached_prompt_tokens}}


def _add_cache_and_timings(data: dict[str, Any], timings: Timings) -> None:
    """A whole completion's usage with its cached tokens, and llama-server's timings."""
    if isinstance(data.get("usage"), dict):
        data["usage"] = with_cached_tokens(data["usage"], timings)
    data["timings"] = llama_timings(timings)


def generated_tokens(chunk: dict[str, Any]) -> int:
    """Tokens one stream chunk carries: llama.cpp streams a token per chunk and choice (the
    worker's usage at the end corrects the count)."""
    count = 0
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if choice.get("text") or delta.get("content") or delta.get("tool_calls"):
            count += 1
    return count


def budget_stop_chunk(chunk: dict[str, Any], model: str, note: str) -> dict[str, Any]:
    """The last chunk of a stream stopped by its key's token budget: each choice ends with
    finish_reason "length" (as at max_tokens), and ``note`` says why."""
    chat = chunk.get("object") == "chat.completion.chunk"
    choices = [
        {"index": c.get("index", 0), **({"delta": {}} if chat else {"text": ""}), "logprobs": None, "finish_reason": "length"}
        for c in chunk.get("choices") or [{"index": 0}]
    ]
    return {**_envelope(chunk, model), "choices": choices, "note": note}


def usage_chunk(last: dict[str, Any] | None, model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {**_envelope(last, model), "choices": [], "usage": usage}


def _envelope(chunk: dict[str, Any] | None, model: str) -> dict[str, Any]:
    """A chunk the gateway adds to a stream, as one of the stream's own (its id, object, created)."""
    chunk = chunk or {}
    return {
        "id": chunk.get("id", f"chatcmpl-{uuid.uuid4().hex}"),
        "object": chunk.get("object", "chat.completion.chunk"),
        "created": chunk.get("created", int(time.time())),
        "model": model,
    }
