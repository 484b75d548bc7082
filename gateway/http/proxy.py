"""One OpenAI request through a model's worker: a whole response, or a server-sent event stream.

The lease (a run slot on a ready worker, from the pool) is held until the response's last byte;
a client that goes away closes the stream, which cancels the generation in the worker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Response
from litestar.response import Stream

from gateway.errors import EngineError
from gateway.http.errors import error_body, raise_worker_error
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.telemetry import REQUEST_ID_HEADER, RequestRecord
from gateway.runtime.pool import Lease

SSE_DONE = b"data: [DONE]\n\n"


def sse(data: Any) -> bytes:
    return b"data: " + msgspec.json.encode(data) + b"\n\n"


def _ttft(record: RequestRecord, sent_at: float, timings: dict[str, Any] | None) -> float | None:
    """Time to first token from the request's arrival: the gateway's part plus the worker's."""
    worker_ttft = (timings or {}).get("ttft_s")
    if not isinstance(worker_ttft, (int, float)):
        return None
    return (sent_at - record.started) + float(worker_ttft)


async def whole(lease: Lease, record: RequestRecord, metrics: GatewayMetrics, op: str, params: dict[str, Any]) -> Response:
    """A non-streamed request; the lease is released when it returns."""
    async with lease:
        sent_at = time.monotonic()
        async for msg in lease.request(op, params, stream=False):
            if msg["type"] == "error":
                raise_worker_error(msg, lease.name)
            if msg["type"] == "result":
                data = msg["data"]
                usage = msg.get("usage")
                if isinstance(data, dict):
                    data["model"] = lease.name
                    usage = usage or data.get("usage")
                record.finish(metrics, 200, ttft_s=_ttft(record, sent_at, msg.get("timings")), usage=usage)
                return Response(content=data, status_code=200, headers={REQUEST_ID_HEADER: record.request_id})
    raise EngineError(f"model {lease.name!r}: no result from the worker")


async def streamed(
    lease: Lease, record: RequestRecord, metrics: GatewayMetrics, op: str, params: dict[str, Any], include_usage: bool
) -> Stream:
    """A streamed request; the lease passes to the stream, which releases it at its end."""
    messages = lease.request(op, params, stream=True)
    try:
        # Pull the first message before answering, so an early error still gets its real status.
        first = await anext(messages)
        if first["type"] == "error":
            raise_worker_error(first, lease.name)
    except BaseException:
        await messages.aclose()
        await lease.release()
        raise
    ttft = time.monotonic() - record.started

    async def events() -> AsyncIterator[bytes]:
        last: dict[str, Any] | None = None
        # A client that goes away is recorded as 499 (nginx's "client closed request").
        status, end_usage = 499, None
        try:
            msg: dict[str, Any] | None = first
            while msg is not None:
                if msg["type"] == "chunk":
                    data = msg["data"]
                    data["model"] = lease.name
                    last = data
                    yield sse(data)
                elif msg["type"] == "end":
                    end_usage = msg.get("usage")
                    if include_usage and end_usage is not None:
                        yield sse(_usage_chunk(last, lease.name, end_usage))
                    status = 200
                    break
                elif msg["type"] == "error":
                    # Headers are gone: report in-band, as OpenAI does, then end the stream.
                    yield sse(error_body(str(msg.get("message")), "server_error"))
                    status = 500
                    break
                msg = await anext(messages, None)
            yield SSE_DONE
        finally:
            record.finish(metrics, status, ttft_s=ttft, usage=end_usage)
            await messages.aclose()
            await lease.release()

    return Stream(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", REQUEST_ID_HEADER: record.request_id},
    )


def _usage_chunk(last: dict[str, Any] | None, model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": (last or {}).get("id", f"chatcmpl-{uuid.uuid4().hex}"),
        "object": (last or {}).get("object", "chat.completion.chunk"),
        "created": (last or {}).get("created", int(time.time())),
        "model": model,
        "choices": [],
        "usage": usage,
    }
