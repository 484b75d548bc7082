"""An operator's restart of a model (POST /admin/models/NAME/restart, `gateway restart NAME`) on
fake workers: the requests that come while it restarts wait for the new worker."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.engine.protocol import Op, Result
from gateway.errors import ConflictError, ModelUnavailableError
from gateway.runtime.fake import FakeScript, FakeTransport
from gateway.runtime.states import ModelState
from tests.unit.runtime.pools import make_config, make_pool, wait_for


async def complete(pool, model: str) -> list:
    lease = await pool.acquire(model)
    async with lease:
        return [m async for m in lease.request(Op.COMPLETION, {"prompt": "a"}, stream=False)]


@pytest.mark.parametrize("load", ["eager", "on_demand"])
def test_a_request_that_comes_while_an_operator_restarts_its_model_waits_for_the_new_worker(tiny, load):
    async def run():
        release_stop = threading.Event()
        transport = FakeTransport(FakeScript(hold_stop=release_stop))  # a worker stops when the test says
        pool = make_pool(make_config(tiny, [{"name": "m", "load": load}]), transport)
        await pool.start()
        try:
            await pool.load("m")
            old = pool.entries["m"].worker
            # The old worker is stopping (held there): the request comes now.
            restart = asyncio.create_task(pool.restart("m"))
            await wait_for(lambda: old.state is not ModelState.READY)
            request = asyncio.create_task(complete(pool, "m"))
            # It holds its slot while the old worker still stops (or, wrongly, has its answer already).
            await wait_for(lambda: pool.entries["m"].busy or request.done())
            release_stop.set()
            replies = await request
            entry = await restart
            return replies, entry.state, entry.worker is not old
        finally:
            release_stop.set()
            await pool.stop()

    replies, state, replaced = asyncio.run(run())
    assert isinstance(replies[-1], Result)
    assert state is ModelState.READY and replaced


def test_a_restart_of_a_model_with_a_request_running_is_refused_and_changes_nothing(tiny):
    async def run():
        hold = threading.Event()
        transport = FakeTransport(FakeScript(hold_answer=hold))
        pool = make_pool(make_config(tiny, [{"name": "m"}]), transport)
        await pool.start()
        try:
            worker = pool.entries["m"].worker
            request = asyncio.create_task(complete(pool, "m"))
            await wait_for(lambda: pool.entries["m"].busy)
            with pytest.raises(ConflictError, match="requests running or waiting"):
                await pool.restart("m")
            hold.set()
            await request
            return pool.entries["m"].worker is worker, pool.entries["m"].state
        finally:
            hold.set()
            await pool.stop()

    assert asyncio.run(run()) == (True, ModelState.READY)


def test_a_crashed_model_waiting_for_its_restart_keeps_its_memory_from_an_on_demand_load(tiny):
    """Its restart starts it in the same place: a model loaded into that memory meanwhile would
    leave the restart without room (an out-of-memory crash on a real GPU)."""

    async def run():
        transport = FakeTransport(FakeScript())
        # Each tiny model is planned at ~720 MiB: 1200 MiB holds one of them.
        models = [{"name": "a"}, {"name": "b", "load": "on_demand"}]
        pool = make_pool(make_config(tiny, models, gpus=["1200MiB"], restart_backoff_s=60), transport)
        await pool.start()
        try:
            transport.latest("a").crash()
            await wait_for(lambda: pool.entries["a"].restart is not None and not pool.entries["a"].restart.done())
            with pytest.raises(ModelUnavailableError, match="cannot be placed"):
                await pool.acquire("b")
            return bool(transport.alive("b"))
        finally:
            await pool.stop()

    assert asyncio.run(run()) is False
