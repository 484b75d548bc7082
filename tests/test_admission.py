"""Per-model flow control (gateway.admission)."""

import asyncio

import pytest

from gateway.admission import Admission
from gateway.errors import QueueFullError, QueueTimeoutError


def test_requests_beyond_concurrency_and_queue_are_refused_at_once():
    async def scenario():
        gate = Admission("m", max_concurrency=1, queue_size=1)
        release = asyncio.Event()

        async def hold():
            async with gate.slot(timeout=5):
                await release.wait()

        running = asyncio.create_task(hold())
        await asyncio.sleep(0)
        waiting = asyncio.create_task(hold())
        await asyncio.sleep(0)
        assert (gate.running, gate.waiting) == (1, 1)
        with pytest.raises(QueueFullError):
            async with gate.slot(timeout=5):
                pass
        release.set()
        await asyncio.gather(running, waiting)
        assert (gate.running, gate.waiting, gate.rejected["queue_full"]) == (0, 0, 1)

    asyncio.run(scenario())


def test_a_request_that_waits_past_its_timeout_gets_queue_timeout():
    async def scenario():
        gate = Admission("m", max_concurrency=1, queue_size=4)
        release = asyncio.Event()

        async def hold():
            async with gate.slot(timeout=5):
                await release.wait()

        task = asyncio.create_task(hold())
        await asyncio.sleep(0)
        with pytest.raises(QueueTimeoutError):
            async with gate.slot(timeout=0.05):
                pass
        assert (gate.waiting, gate.rejected["queue_timeout"]) == (0, 1)
        release.set()
        await task

    asyncio.run(scenario())
