"""The real transport's reading side (gateway.runtime.transport.SubprocessConnection.messages):
what the worker's pipe holds is read at once and its whole lines decoded together (issue 24,
item 3), wherever the reads cut the lines; the protocol's limits hold as with a readline a line."""

from __future__ import annotations

import asyncio

import pytest

from gateway.engine.protocol import Chunk, End, Timings, encode
from gateway.runtime import transport
from gateway.runtime.transport import ProtocolError, SubprocessConnection

TIMINGS = Timings(ttft_s=None, prompt_s=None, decode_s=0.0, completion_tokens=1, prompt_tokens=1, cached_prompt_tokens=0)


class Exited:
    """A process that has exited (so a protocol break kills nothing), with pipes the test feeds."""

    pid = 0
    returncode = 0
    stdin = None

    def __init__(self) -> None:
        self.stdout = asyncio.StreamReader()
        self.stderr = asyncio.StreamReader()
        self.stderr.feed_eof()

    async def wait(self) -> int:
        return 0


def lines(n: int) -> list[bytes]:
    return [encode(Chunk(id=i, data={"choices": [{"text": f"token {i}", "index": 0}]})) for i in range(n)]


async def _next(messages, proc: Exited, feed: bytes):
    """The next message once ``feed`` is in the pipe; it must not come before."""
    pending = asyncio.ensure_future(anext(messages))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not pending.done(), "a message came before its line ended"
    proc.stdout.feed_data(feed)
    return await asyncio.wait_for(pending, 30)


def test_lines_cut_anywhere_by_the_reads_come_out_whole_and_in_order():
    async def run():
        proc = Exited()
        messages = SubprocessConnection(proc, "tiny").messages()  # type: ignore[arg-type]
        a, b, c = lines(3)
        proc.stdout.feed_data(a[:7])
        first = await _next(messages, proc, a[7:] + b + c[:5])
        second = await anext(messages)  # a whole line that came with the end of the first
        third = await _next(messages, proc, c[5:])
        return first, second, third

    assert [m.id for m in asyncio.run(run())] == [0, 1, 2]


def test_many_lines_in_one_read_and_a_line_in_many_reads():
    async def run():
        proc = Exited()
        conn = SubprocessConnection(proc, "tiny")  # type: ignore[arg-type]
        messages = conn.messages()
        batch = lines(64)
        proc.stdout.feed_data(b"".join(batch))
        got = [await anext(messages) for _ in range(64)]
        end = encode(End(id=7, usage={"completion_tokens": 1}, timings=TIMINGS))
        for k in range(len(end) - 1):
            proc.stdout.feed_data(end[k : k + 1])
            await asyncio.sleep(0)
        last = await _next(messages, proc, end[-1:])
        proc.stdout.feed_eof()
        assert [m async for m in messages] == []
        return got, last

    got, last = asyncio.run(run())
    assert [m.id for m in got] == list(range(64)) and got[5].data["choices"][0]["text"] == "token 5"
    assert isinstance(last, End) and last.id == 7


def test_a_last_line_without_its_newline_is_read_at_the_end_of_the_output():
    async def run():
        proc = Exited()
        messages = SubprocessConnection(proc, "tiny").messages()  # type: ignore[arg-type]
        proc.stdout.feed_data(lines(2)[1].rstrip(b"\n"))
        proc.stdout.feed_eof()
        return [m async for m in messages]

    assert [m.id for m in asyncio.run(run())] == [1]


def test_a_line_over_the_limit_across_reads_is_a_protocol_error(monkeypatch):
    monkeypatch.setattr(transport, "READ_SIZE", 100)

    async def run():
        proc = Exited()
        messages = SubprocessConnection(proc, "tiny", line_limit=1000).messages()  # type: ignore[arg-type]
        proc.stdout.feed_data(lines(1)[0] + b'{"type": "chunk", "id": 1, "data": {"x": "' + b"y" * 2000)
        proc.stdout.feed_eof()
        return [m async for m in messages]

    with pytest.raises(ProtocolError, match="over the"):
        asyncio.run(run())


def test_a_line_that_is_not_a_message_among_good_ones_is_named_in_the_protocol_error_after_the_ones_before_it():
    got = []

    async def run():
        proc = Exited()
        messages = SubprocessConnection(proc, "tiny").messages()  # type: ignore[arg-type]
        good = lines(3)
        proc.stdout.feed_data(good[0] + b'{"type": "bogus", "id": 1}\n' + good[1] + good[2])
        proc.stdout.feed_eof()
        async for message in messages:
            got.append(message)

    with pytest.raises(ProtocolError, match="bogus"):
        asyncio.run(run())
    assert [m.id for m in got] == [0]  # as a reader line by line would have seen them
