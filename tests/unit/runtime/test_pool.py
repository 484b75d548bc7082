"""The model pool on fake workers (gateway.runtime.fake): lifecycles and races in milliseconds.

The pool, its WorkerProcess state machine, admission, placement and eviction are the real ones;
only the worker process is the in-memory fake. Models are tiny real GGUF headers on a declared
inventory, so planning runs as in production.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.engine.protocol import Cancel, Chunk, End, Op, Request, Result
from gateway.engine.protocol import Ready as ProtocolReady
from gateway.errors import ModelUnavailableError
from gateway.http.app import plan_now
from gateway.runtime.events import Crashed, LoadWaited, Ready, Restarting
from gateway.runtime.fake import FakeScript, FakeTransport
from gateway.runtime.pool import ModelPool
from gateway.runtime.requests import Reply, WorkerExited
from gateway.runtime.states import IllegalTransition, ModelState, check_transition
from gateway.runtime.worker_process import WorkerProcess
from tests.unit.runtime.pools import FAST, make_config, make_pool, wait_for

async def complete(pool: ModelPool, model: str) -> list[Reply]:
    lease = await pool.acquire(model)
    async with lease:
        return [m async for m in lease.request(Op.COMPLETION, {"prompt": "a"}, stream=False)]


def test_the_transition_table_refuses_what_it_does_not_list():
    check_transition("m", ModelState.STOPPED, ModelState.STARTING)
    with pytest.raises(IllegalTransition):
        check_transition("m", ModelState.STOPPING, ModelState.READY)
    with pytest.raises(IllegalTransition):
        check_transition("m", ModelState.STOPPED, ModelState.READY)


def test_a_ready_message_after_stop_began_is_ignored_and_the_exit_is_not_a_crash(tiny):
    async def run():
        loaded, stopped = threading.Event(), threading.Event()
        transport = FakeTransport(FakeScript(hold_load=loaded, ready_during_stop=True, hold_stop=stopped))
        events: list = []
        config = make_config(tiny, [{"name": "m"}])
        launch = plan_now(config)["m"]
        worker = WorkerProcess(launch.worker_spec(config.models[0]), {}, transport, lambda w, event: events.append(event))
        await worker.start()
        conn = transport.latest("m")
        stopping = asyncio.create_task(worker.stop(600))
        await wait_for(lambda: conn.shutdown_at is not None)  # the stop began while it loads
        loaded.set()  # the load finishes and says "ready" while the worker stops
        await wait_for(lambda: any(isinstance(m, ProtocolReady) for m in conn.said))
        assert worker.state is ModelState.STOPPING
        stopped.set()  # it exits after its "ready" (read first: the worker's messages keep their order)
        await stopping
        assert worker.state is ModelState.STOPPED
        assert not any(isinstance(e, Ready | Crashed) for e in events)
        assert not transport.alive()

    asyncio.run(run())


def test_a_crashed_model_restarts_once_as_a_new_worker(tiny):
    async def run():
        transport = FakeTransport()
        pool = make_pool(make_config(tiny, [{"name": "m"}]), transport)
        await pool.start()
        first = transport.latest("m")
        first.crash()
        await wait_for(lambda: pool.entries["m"].state is ModelState.FAILED)
        await wait_for(lambda: pool.entries["m"].state is ModelState.READY)
        assert transport.latest("m") is not first and len(transport.alive("m")) == 1
        assert isinstance((await complete(pool, "m"))[-1], Result)
        await pool.stop()
        assert not transport.alive()

    asyncio.run(run())


def test_a_reload_during_a_restart_backoff_leaves_exactly_one_worker(tiny):
    async def run():
        transport = FakeTransport()
        config = make_config(tiny, [{"name": "m"}], restart_backoff_s=0.3)
        pool = make_pool(config, transport)
        await pool.start()
        transport.latest("m").crash()
        await wait_for(lambda: pool.entries["m"].state is ModelState.FAILED)
        await wait_for(lambda: pool.entries["m"].restart is not None)
        backoff = pool.entries["m"].restart  # the restart, waiting for its backoff
        # Within the backoff, a reload changes the model: the old restart must not start too.
        changed = make_config(tiny, [{"name": "m", "n_ctx": 512}], restart_backoff_s=0.3)
        result = await pool.reload(changed)
        assert result.reloaded and result.changed == ["m"]
        await wait_for(backoff.done)  # past its backoff (or cancelled): it can start nothing any more
        await wait_for(lambda: pool.entries["m"].state is ModelState.READY)
        assert len(transport.alive("m")) == 1
        assert transport.latest("m").spec.n_ctx == 512
        await pool.stop()
        assert not transport.alive()

    asyncio.run(run())


def test_a_model_that_a_reload_removes_and_that_crashes_meanwhile_is_not_restarted(tiny):
    async def run():
        answer = threading.Event()  # never set: the request runs until its worker dies
        transport = FakeTransport(FakeScript(hold_answer=answer))
        pool = make_pool(make_config(tiny, [{"name": "keep"}, {"name": "gone"}]), transport)
        await pool.start()
        gone = pool.entries["gone"]
        request = asyncio.create_task(complete(pool, "gone"))  # keeps "gone" busy: the reload drains it
        await wait_for(lambda: any(isinstance(c, Request) for c in transport.latest("gone").received))
        reload = asyncio.create_task(pool.reload(make_config(tiny, [{"name": "keep"}])))
        await wait_for(lambda: gone.removed)  # the reload drains it now
        transport.latest("gone").crash()  # a crash during the drain
        result = await reload
        assert result.reloaded and result.removed == ["gone"]
        msgs = await request
        assert isinstance(msgs[-1], WorkerExited)  # the in-flight request learns the worker died
        if gone.restart is not None:
            await wait_for(gone.restart.done)  # past the restart's backoff: it can start nothing any more
        assert transport.alive("gone") == []
        assert "gone" not in pool.entries
        await pool.stop()

    asyncio.run(run())


def test_a_kept_model_that_crashes_during_a_reload_is_restarted(tiny):
    async def run():
        new_loaded = threading.Event()  # the reload waits for "new" to load until it is set
        transport = FakeTransport(lambda spec: FakeScript(hold_load=new_loaded if spec.name == "new" else None))
        pool = make_pool(make_config(tiny, [{"name": "keep"}]), transport)
        await pool.start()
        reload = asyncio.create_task(pool.reload(make_config(tiny, [{"name": "keep"}, {"name": "new"}])))
        await wait_for(lambda: transport.alive("new"))  # the reload is under way
        transport.latest("keep").crash()
        new_loaded.set()
        assert (await reload).reloaded
        await wait_for(lambda: pool.entries["keep"].state is ModelState.READY)
        assert len(transport.alive("keep")) == 1 and len(transport.alive("new")) == 1
        await pool.stop()
        assert not transport.alive()

    asyncio.run(run())


def test_an_on_demand_load_racing_an_eviction_never_runs_both_models(tiny):
    """Two on-demand models that do not fit together: requests alternate between them."""

    async def run():
        transport = FakeTransport(FakeScript(load_s=0.02, tokens=2, token_s=0.005))
        # Each tiny model is planned at ~720 MiB (mostly the CUDA context): 1 GiB holds one.
        config = make_config(
            tiny,
            [{"name": n, "load": "on_demand", "queue_size": 64} for n in ("a", "b")],
            gpus=["1GiB"],
        )
        pool = make_pool(config, transport)
        await pool.start()
        both_alive = []

        async def watch():
            while True:
                both_alive.append(bool(transport.alive("a")) and bool(transport.alive("b")))
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(*(complete(pool, "ab"[i % 2]) for i in range(20)), return_exceptions=True)
        watcher.cancel()
        served = [r for r in results if isinstance(r, list) and isinstance(r[-1], Result)]
        refused = [r for r in results if isinstance(r, ModelUnavailableError)]
        assert len(served) + len(refused) == 20, results
        assert served, results
        assert not any(both_alive)
        await pool.stop()
        assert not transport.alive()

    asyncio.run(run())


def test_sigterm_during_a_load_stops_the_loading_worker_and_starts_nothing(tiny):
    async def run():
        transport = FakeTransport(FakeScript(hold_load=threading.Event()))  # never set: loads until stopped
        pool = make_pool(make_config(tiny, [{"name": "m"}, {"name": "od", "load": "on_demand"}]), transport)
        starting = asyncio.create_task(pool.start())
        await wait_for(lambda: transport.alive("m"))
        waiting = asyncio.create_task(complete(pool, "od"))  # an on-demand load in progress too
        await wait_for(lambda: transport.alive("od"))
        await pool.stop()
        await starting
        with pytest.raises(ModelUnavailableError):
            await waiting
        assert not transport.alive()
        assert pool.entries["m"].state is ModelState.STOPPED
        # Nothing left waiting (a restart or retry after its backoff) starts a worker later.
        for entry in pool.entries.values():
            if entry.restart is not None:
                await wait_for(entry.restart.done)
        assert not transport.alive()

    asyncio.run(run())


def test_a_gateway_with_only_on_demand_models_is_healthy_before_any_loads(tiny):
    async def run():
        pool = make_pool(make_config(tiny, [{"name": "od", "load": "on_demand"}]), FakeTransport())
        await pool.start()
        status, serving, models = pool.health()
        assert (status, serving) == ("ok", True) and models["od"]["state"] == "stopped"
        await pool.drain(0)
        assert pool.health()[:2] == ("draining", False)
        await pool.stop()

    asyncio.run(run())


def test_health_is_unavailable_when_every_model_failed(tiny):
    async def run():
        pool = make_pool(make_config(tiny, [{"name": "m"}]), FakeTransport(FakeScript(fail_load="no memory")))
        await pool.start()
        status, serving, models = pool.health()
        assert (status, serving) == ("unavailable", False) and models["m"] == {"state": "failed", "reason": "no memory"}
        await pool.stop()

    asyncio.run(run())


def test_the_restart_budget_leaves_a_model_failed(tiny):
    async def run():
        transport = FakeTransport()
        pool = make_pool(make_config(tiny, [{"name": "m"}], restart_max_failures=1, restart_backoff_s=0.01), transport)
        await pool.start()
        transport.latest("m").crash()
        await wait_for(lambda: pool.entries["m"].state is ModelState.READY and len(transport.spawned) == 2)
        transport.latest("m").crash()
        await wait_for(lambda: pool.entries["m"].state is ModelState.FAILED)
        assert "gave up after 2 crashes" in (pool.entries["m"].reason or "")
        assert len(transport.spawned) == 2
        await pool.stop()

    asyncio.run(run())


def test_eviction_spares_the_often_used_model_over_the_most_recently_used_one(tiny):
    """Least recently used would evict "a" (its requests came first); "a" is asked for five times
    as often as "b", and both reload as fast, so evicting "b" costs users less waiting."""

    async def run():
        transport = FakeTransport(FakeScript(load_s=0.01))
        config = make_config(tiny, [{"name": n, "load": "on_demand"} for n in ("a", "b", "c")], gpus=["1600MiB"])
        pool = make_pool(config, transport)
        await pool.start()
        for _ in range(5):
            await complete(pool, "a")
        await complete(pool, "b")
        await complete(pool, "c")
        assert [n for n in "abc" if transport.alive(n)] == ["a", "c"]
        assert pool.entries["b"].state is ModelState.STOPPED
        await pool.stop()

    asyncio.run(run())


def test_a_cancelled_request_still_reads_its_end_with_the_usage_so_far(tiny):
    async def run():
        transport = FakeTransport(FakeScript(tokens=50, token_s=0.01))
        pool = make_pool(make_config(tiny, [{"name": "m"}]), transport)
        await pool.start()
        try:
            lease = await pool.acquire("m")
            async with lease:
                messages = lease.request(Op.COMPLETION, {"prompt": "a"}, stream=True)
                first = await anext(messages)
                messages.cancel()
                messages.cancel()  # once is enough: the worker is told once
                rest = [m async for m in messages]
            cancels = [m for m in transport.latest("m").received if isinstance(m, Cancel)]
            return first, rest, cancels
        finally:
            await pool.stop()

    first, rest, cancels = asyncio.run(run())
    assert isinstance(first, Chunk)
    assert isinstance(rest[-1], End) and rest[-1].usage["prompt_tokens"] == 1
    assert rest[-1].usage["completion_tokens"] < 50
    assert len(cancels) == 1


def test_an_on_demand_model_loads_beside_the_lightest_gpu_under_spread_and_packs_under_best_fit(tiny):
    async def gpu_of(packing: str) -> tuple[int, ...]:
        config = make_config(
            tiny, [{"name": "big", "weight": 10.0}, {"name": "od", "load": "on_demand"}], gpus=["4GiB", "6GiB"], planner_packing=packing
        )
        pool = make_pool(config, FakeTransport(FakeScript(load_s=0.01)))
        await pool.start()
        try:
            await complete(pool, "od")
            return tuple(d.gpu for d in pool.entries["od"].launch.devices), tuple(d.gpu for d in pool.entries["big"].launch.devices)
        finally:
            await pool.stop()

    # spread: "big" takes the roomier GPU 1; "od" then goes to idle GPU 0 although GPU 1 has more
    # memory free, because "big" (weight 10) makes GPU 1 the busier one.
    assert asyncio.run(gpu_of("spread")) == ((0,), (1,))
    # best_fit: both on the smaller GPU 0, the least memory left unused.
    assert asyncio.run(gpu_of("best_fit")) == ((0,), (0,))


def test_a_worker_that_breaks_the_protocol_is_killed_and_restarted_and_its_requests_get_503(tiny):
    # Issue 21, item 2: a line over the limit raised in the reader with the worker alive; the
    # pool waited for its exit forever, its requests hung and the model stayed "ready".
    async def run():
        transport = FakeTransport(FakeScript(tokens=1000, token_s=0.01))
        events: list = []
        pool = make_pool(make_config(tiny, [{"name": "m"}]), transport, events)
        await pool.start()
        try:
            first = transport.latest("m")
            lease = await pool.acquire("m")
            async with lease:
                messages = lease.request(Op.COMPLETION, {"prompt": "a"}, stream=True)
                assert isinstance(await anext(messages), Chunk)
                first.break_protocol()
                async with asyncio.timeout(60):  # only guards against a hang (the bug)
                    rest = [m async for m in messages]
            assert not first.alive
            await wait_for(lambda: any(isinstance(e, Restarting) and e.model == "m" for e in events))
            await wait_for(lambda: pool.entries["m"].state is ModelState.READY)
            assert transport.latest("m") is not first and len(transport.alive("m")) == 1
            assert isinstance((await complete(pool, "m"))[-1], Result)
            return rest
        finally:
            await pool.stop()

    rest = asyncio.run(run())
    error = rest[-1]
    assert isinstance(error, WorkerExited) and "killed" in error.message


def test_a_worker_whose_stdin_is_closed_answers_503_and_restarts(tiny):
    # Before: a 500 "its worker is gone" on every request, the model still "ready".
    async def run():
        transport = FakeTransport()
        pool = make_pool(make_config(tiny, [{"name": "m"}]), transport)
        await pool.start()
        try:
            first = transport.latest("m")
            first.close_stdin()
            with pytest.raises(ModelUnavailableError, match="restarts"):
                await complete(pool, "m")
            await wait_for(lambda: not first.alive)
            await wait_for(lambda: pool.entries["m"].state is ModelState.READY and transport.latest("m") is not first)
            assert isinstance((await complete(pool, "m"))[-1], Result)
        finally:
            await pool.stop()

    asyncio.run(run())


class ModelFile:
    """A model file that a test breaks and mends: while broken, every load of it fails."""

    def __init__(self, model: str = "m") -> None:
        self.model = model
        self.broken = False

    def __call__(self, spec) -> FakeScript:
        broken = self.broken and spec.name == self.model
        return FakeScript(fail_load="not a GGUF file (truncated)") if broken else FakeScript()


def test_an_eager_model_whose_restart_failed_to_load_is_tried_again_until_it_loads(tiny):
    async def run():
        file = ModelFile()
        transport = FakeTransport(file)
        pool = make_pool(make_config(tiny, [{"name": "m"}, {"name": "other"}]), transport)
        await pool.start()
        try:
            file.broken = True  # the file is truncated while the worker is killed
            transport.latest("m").crash()
            await wait_for(lambda: "truncated" in (pool.entries["m"].reason or ""))
            assert pool.entries["m"].state is ModelState.FAILED
            file.broken = False  # and restored: the pool's next try loads it, nobody asks
            await wait_for(lambda: pool.entries["m"].state is ModelState.READY)
            assert len(transport.alive("m")) == 1
            assert isinstance((await complete(pool, "m"))[-1], Result)
        finally:
            await pool.stop()
            assert not transport.alive()

    asyncio.run(run())


def test_admin_load_starts_a_failed_eager_model_again_at_once(tiny):
    async def run():
        file = ModelFile()
        file.broken = True
        transport = FakeTransport(file)
        # A long backoff: the model would not be tried again by itself during the test.
        pool = make_pool(make_config(tiny, [{"name": "m"}], restart_backoff_s=30), transport)
        await pool.start()
        try:
            assert pool.entries["m"].state is ModelState.FAILED
            await wait_for(lambda: pool.entries["m"].restart is not None)
            retry = pool.entries["m"].restart  # waiting for its backoff
            file.broken = False
            entry = await pool.load("m")
            assert entry.state is ModelState.READY and len(transport.alive("m")) == 1
            await wait_for(retry.done)
            assert retry.cancelled()  # the pending retry was dropped, not run as well
            assert len(transport.spawned) == 2
        finally:
            await pool.stop()
            assert not transport.alive()

    asyncio.run(run())


def test_a_reload_starts_a_failed_unchanged_eager_model_again(tiny):
    async def run():
        file = ModelFile()
        file.broken = True
        transport = FakeTransport(file)
        config = make_config(tiny, [{"name": "m"}, {"name": "ok"}], restart_backoff_s=30)
        pool = make_pool(config, transport)
        await pool.start()
        try:
            assert pool.entries["m"].state is ModelState.FAILED
            file.broken = False
            result = await pool.reload(make_config(tiny, [{"name": "m"}, {"name": "ok"}], restart_backoff_s=30))
            assert result.reloaded and result.restarted == ["m"]
            assert result.unchanged == ["ok"]
            assert pool.entries["m"].state is ModelState.READY
        finally:
            await pool.stop()
            assert not transport.alive()

    asyncio.run(run())


def test_requests_to_an_eager_model_that_a_reload_restarts_wait_for_its_load(tiny):
    async def run():
        loaded = threading.Event()  # the reloaded worker (n_ctx 512) loads until it is set
        transport = FakeTransport(lambda spec: FakeScript(hold_load=loaded if spec.n_ctx == 512 else None))
        events: list = []
        pool = make_pool(make_config(tiny, [{"name": "m"}]), transport, events)
        await pool.start()
        try:
            reload = asyncio.create_task(pool.reload(make_config(tiny, [{"name": "m", "n_ctx": 512}])))
            await wait_for(lambda: pool.entries["m"].state is ModelState.STARTING and transport.latest("m").spec.n_ctx == 512)
            # The new worker is loading: the request takes its slot and waits for it (up to
            # load_timeout_s), no 503.
            request = asyncio.create_task(complete(pool, "m"))
            await wait_for(lambda: pool.entries["m"].admission.running == 1 or request.done())
            assert not request.done(), request  # waiting, not refused
            loaded.set()
            assert isinstance((await request)[-1], Result)
            assert any(isinstance(e, LoadWaited) and e.model == "m" for e in events)
            assert (await reload).changed == ["m"]
        finally:
            await pool.stop()

    asyncio.run(run())


def test_a_model_whose_stream_is_still_open_is_not_evicted(tiny):
    """The pool-level twin of tests/system/test_ondemand.py's streaming test: a stream holds its
    lease until the client is done with it (even once the worker has sent its last token), so
    nothing can evict its model; once released, the model goes to make room."""

    async def run():
        transport = FakeTransport(FakeScript(tokens=5))
        # Each tiny model is planned at ~720 MiB: 1600 MiB holds the eager one and one more.
        models = [{"name": "base"}] + [{"name": n, "load": "on_demand"} for n in ("b", "c")]
        pool = make_pool(make_config(tiny, models, gpus=["1600MiB"]), transport)
        await pool.start()
        try:
            lease = await pool.acquire("b")
            async with lease:
                messages = lease.request(Op.COMPLETION, {"prompt": "a"}, stream=True)
                first = await anext(messages)
                with pytest.raises(ModelUnavailableError, match="cannot be placed even after evicting every idle on-demand model"):
                    await pool.acquire("c")
                b_meanwhile = pool.entries["b"].state, bool(transport.alive("b")), bool(transport.alive("c"))
                rest = [m async for m in messages]
            served = await complete(pool, "c")
            after = pool.entries["b"].state, bool(transport.alive("b"))
            return first, b_meanwhile, rest, served, after
        finally:
            await pool.stop()

    first, b_meanwhile, rest, served, after = asyncio.run(run())
    assert isinstance(first, Chunk)
    assert b_meanwhile == (ModelState.READY, True, False)
    # The whole stream, not cut short.
    assert [type(m) for m in rest] == [Chunk] * 4 + [End] and rest[-1].usage["completion_tokens"] == 5
    assert isinstance(served[-1], Result)
    assert after == (ModelState.STOPPED, False)  # idle again, it went for c


def test_a_stopping_worker_still_holds_its_memory_for_placement_until_it_exits(tiny):
    # Issue 25, item 4: "which states hold memory" is decided once (states.HOLDS_MEMORY); the
    # pool counted only starting and ready, the /ui map stopping too.
    async def run():
        transport = FakeTransport(FakeScript(stop_s=60.0, kill_after_s=60.0))
        pool = make_pool(make_config(tiny, [{"name": "m", "load": "on_demand"}]), transport)
        await pool.start()
        try:
            await pool.load("m")
            unloading = asyncio.create_task(pool.unload("m"))
            await wait_for(lambda: pool.entries["m"].state is ModelState.STOPPING)
            while_stopping = [(r.name, r.holds_memory) for r in pool.residents()]
            transport.latest("m").crash(0)  # its exit comes now rather than after stop_s
            await unloading
            return while_stopping, pool.residents()
        finally:
            await pool.stop()

    while_stopping, after = asyncio.run(run())
    assert while_stopping == [("m", True)]
    assert after == []


def test_one_view_of_a_model_feeds_v1_models_the_metrics_and_the_ui_row(tiny):
    # Issue 25, item 4: pool.describe, telemetry's snapshots and the /ui row each read the entry
    # and its worker themselves; now all three format the one view (pool.view).
    from gateway.http.routes.ui import model_row
    from gateway.observability.activity import RecentActivity
    from gateway.observability.telemetry import model_snapshot

    async def run():
        transport = FakeTransport(FakeScript(tokens=1000, token_s=0.01))
        pool = make_pool(make_config(tiny, [{"name": "m", "aliases": ["mm"]}, {"name": "od", "load": "on_demand"}]), transport)
        await pool.start()
        try:
            lease = await pool.acquire("m")
            async with lease:
                views = {v.name: v for v in pool.views()}
                return views, {n: pool.describe(pool.entries[n]) for n in views}
        finally:
            await pool.stop()

    views, described = asyncio.run(run())
    m, od = views["m"], views["od"]
    assert m.state is ModelState.READY and m.running == 1 and m.pid is not None and m.holds_memory
    assert od.state is ModelState.STOPPED and od.launch is None and not od.holds_memory
    for view in (m, od):
        doc, snapshot, row = described[view.name], model_snapshot(view), model_row(view, RecentActivity())
        assert doc == view.openai()
        assert doc["state"] == snapshot.state == row["state"] == view.state.value
        assert doc["queue"]["running"] == snapshot.running == row["running"] == view.running
        assert [d["gpu"] for d in (doc["planned"] or {}).get("devices", [])] == list(snapshot.planned_bytes) == row["gpus"]
    assert described["m"]["aliases"] == model_row(m, RecentActivity())["aliases"] == ["mm"]
