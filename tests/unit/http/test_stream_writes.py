"""A streamed response (gateway.http.proxy.streamed) writes the events of the replies that have
arrived together, one write per batch instead of one per chunk, with the same bytes (issue 24,
item 3: the app's per-chunk cost at 64 streams)."""

from __future__ import annotations

import asyncio
import collections

import msgspec

from gateway.engine.protocol import Chunk, End, Op, Timings
from gateway.http import proxy
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.telemetry import RequestRecord

TIMINGS = Timings(ttft_s=0.01, prompt_s=0.01, decode_s=0.02, completion_tokens=3, prompt_tokens=2, cached_prompt_tokens=0)
USAGE = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def chunk(text: str, finish: str | None = None) -> Chunk:
    data = {"id": "cmpl-1", "object": "text_completion", "created": 1, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
    return Chunk(id=1, data=data)


class Arrived:
    """A request's replies, ``arrived`` of them already there (``ready`` hands them out without
    waiting); the rest come one per read."""

    def __init__(self, replies: list, arrived: int) -> None:
        self.replies = collections.deque(replies)
        self.arrived = arrived
        self.closed = False

    def __aiter__(self) -> Arrived:
        return self

    async def __anext__(self):
        if not self.replies:
            raise StopAsyncIteration
        self.arrived = max(0, self.arrived - 1)
        return self.replies.popleft()

    def ready(self):
        if self.arrived and self.replies:
            self.arrived -= 1
            return self.replies.popleft()
        return None

    def cancel(self) -> None:
        pass

    async def aclose(self) -> None:
        self.closed = True


class Lease:
    name = "tiny"

    def __init__(self, stream: Arrived) -> None:
        self.stream = stream
        self.released = False

    def request(self, op, params, *, stream):
        return self.stream

    async def release(self) -> None:
        self.released = True


def writes(replies: list, arrived: int, include_usage: bool = False) -> list[bytes]:
    async def run() -> list[bytes]:
        lease = Lease(Arrived(replies, arrived))
        metrics = GatewayMetrics(lambda: [], lambda: [])
        response = await proxy.streamed(lease, RequestRecord("completions", "req-1"), metrics, Op.COMPLETION, {}, include_usage)  # type: ignore[arg-type]
        out = [part async for part in response.iterator]
        assert lease.released and lease.stream.closed
        return out

    return asyncio.run(run())


def events(data: bytes) -> list[dict | str]:
    return [e if e == "[DONE]" else msgspec.json.decode(e) for e in (part.removeprefix(b"data: ").decode() for part in data.split(b"\n\n") if part)]


REPLIES = [chunk("a"), chunk("b"), chunk("c"), chunk("", "length"), End(id=1, usage=USAGE, timings=TIMINGS)]


def test_chunks_that_arrived_together_are_written_in_one_write():
    # Every reply had arrived by the time the response started (a stream behind its worker).
    out = writes(REPLIES, arrived=len(REPLIES))
    assert len(out) == 1
    got = events(out[0])
    assert [e["choices"][0]["text"] for e in got[:-1]] == ["a", "b", "c", ""]
    assert got[-2]["choices"][0]["finish_reason"] == "length" and "timings" in got[-2]
    assert got[-1] == "[DONE]"


def test_a_chunk_is_written_before_waiting_for_the_next_reply():
    # Two replies had arrived; the third is waited for only after the first two are written.
    out = writes(REPLIES, arrived=2)
    assert [[e["choices"][0]["text"] for e in events(part) if e != "[DONE]"] for part in out] == [["a", "b"], ["c"], ["", ]]


def test_the_bytes_are_the_same_whether_the_chunks_arrive_together_or_one_by_one():
    for include_usage in (False, True):
        together = writes(REPLIES, arrived=len(REPLIES) - 1, include_usage=include_usage)
        one_by_one = writes(REPLIES, arrived=0, include_usage=include_usage)
        assert len(one_by_one) > len(together)
        assert b"".join(together) == b"".join(one_by_one)
        assert all(part.endswith(b"\n\n") for part in together + one_by_one)  # whole events in every write
