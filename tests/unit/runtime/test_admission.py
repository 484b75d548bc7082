"""Per-model flow control (gateway.runtime.admission)."""

import asyncio

import pytest

from gateway.runtime.admission import Admission
from gateway.errors import QueueFullError, QueueTimeoutError
from tests.unit.runtime.pools import wait_for


def test_requests_beyond_concurrency_and_queue_are_refused_at_once():
    async def scenario():
        gate = Admission("m", max_concurrency=1, queue_size=1)
        release = asyncio.Event()

        async def hold():
            async with gate.slot(timeout=5):
                await release.wait()

        running = asyncio.create_task(hold())
        await wait_for(lambda: gate.running == 1)
        waiting = asyncio.create_task(hold())
        await wait_for(lambda: gate.waiting == 1)
        assert (gate.running, gate.waiting) == (1, 1)
        with pytest.raises(QueueFullError):
            async with gate.slot(timeout=5):
                pass
        release.set()
        await asyncio.wait_for(asyncio.gather(running, waiting), 5)
        assert (gate.running, gate.waiting) == (0, 0)

    asyncio.run(scenario())


def test_a_request_that_waits_past_its_timeout_gets_queue_timeout():
    async def scenario():
        gate = Admission("m", max_concurrency=1, queue_size=4)
        release = asyncio.Event()

        async def hold():
            async with gate.slot(timeout=5):
                await release.wait()

        task = asyncio.create_task(hold())
        await wait_for(lambda: gate.running == 1)
        with pytest.raises(QueueTimeoutError):
            async with gate.slot(timeout=0.05):
                pass
        assert gate.waiting == 0
        release.set()
        await asyncio.wait_for(task, 5)
        # The slot is free again for the next one.
        async with gate.slot(timeout=0.05):
            assert gate.running == 1

    asyncio.run(scenario())


def test_waiters_are_served_first_come_first_served():
    async def scenario():
        gate = Admission("m", max_concurrency=1, queue_size=10)
        order: list[int] = []
        release = asyncio.Event()

        async def first():
            async with gate.slot(timeout=5):
                await release.wait()

        async def later(i: int):
            async with gate.slot(timeout=5):
                order.append(i)

        head = asyncio.create_task(first())
        await wait_for(lambda: gate.running == 1)
        tasks = [asyncio.create_task(later(i)) for i in range(5)]
        await wait_for(lambda: gate.waiting == 5)
        release.set()
        await asyncio.wait_for(asyncio.gather(head, *tasks), 5)
        assert order == [0, 1, 2, 3, 4]

    asyncio.run(scenario())
