"""The load gate: llama.cpp's dry run of a placement must fit in the memory free now before a
worker starts (gateway/placement/gate.py decides, the pool acts)."""

from __future__ import annotations

import asyncio
import os

import pytest

from gateway.engine.dry_run import DryRun
from gateway.http.app import plan_now
from gateway.placement.gate import Exceeds, Pass, check_load
from gateway.placement.launch import launch_from_placement
from gateway.placement.planning import inventory, model_request, plan_policy, read_models
from gateway.placement.verify import dry_run
from gateway.runtime.fake import FakeScript, FakeTransport
from gateway.runtime.states import ModelState
from gateway.errors import ModelUnavailableError
from planner.plan import plan
from planner.units import MIB
from tests.unit.runtime.pools import make_config, make_pool

BIG_COMPUTE = DryRun(ok=True, lines=("sched_reserve:      CUDA0 compute buffer size =  3000.00 MiB",))


def test_the_gate_refuses_a_compute_buffer_larger_than_the_free_memory_and_names_the_gpu(tiny):
    config = make_config(tiny, [{"name": "m"}], gpus=["2GiB"])
    files = read_models(config)
    placement = plan([model_request(config.models[0], files.infos["m"])], inventory(config), plan_policy(config)).placements[0]
    launch = launch_from_placement(placement, str(files.paths["m"]))
    verdict = check_load(launch, BIG_COMPUTE.buffers, {0: 2048 * MIB})
    assert isinstance(verdict, Exceeds)
    assert set(verdict.short) == {0} and verdict.excess[0] > 2900 * MIB
    assert "GPU 0" in verdict.reason and "short by" in verdict.reason
    assert isinstance(check_load(launch, DryRun(ok=True).buffers, {0: 2048 * MIB}), Pass)


def test_the_gate_on_a_real_dry_run_of_a_tiny_model_passes_with_room_and_refuses_without(tiny):
    """The CPU build prints the compute under the host's buffers: the gate measures it there."""
    config = make_config(tiny, [{"name": "m", "n_ctx": 4096}], gpus=["1GiB"])
    files = read_models(config)
    placement = plan([model_request(config.models[0], files.infos["m"])], inventory(config), plan_policy(config)).placements[0]
    launch = launch_from_placement(placement, str(files.paths["m"]))
    run = dry_run(launch.worker_spec(config.models[0]), launch.worker_env(dict(os.environ)))
    assert run.ok, run.error
    assert run.buffers.compute, run.lines  # llama.cpp printed its compute buffers
    need = placement.memory.devices[0].total_bytes
    assert isinstance(check_load(launch, run.buffers, {0: need + 64 * MIB}), Pass)
    # A declared inventory smaller than what the dry run needs: refused, short on GPU 0.
    verdict = check_load(launch, run.buffers, {0: need // 2})
    assert isinstance(verdict, Exceeds) and set(verdict.short) == {0}


def test_the_pool_places_again_on_another_gpu_when_the_dry_run_does_not_fit_the_first(tiny):
    async def main():
        transport = FakeTransport(FakeScript(dry_run=DryRun(ok=True, lines=("sched_reserve:      CUDA0 compute buffer size =  1500.00 MiB",))))
        config = make_config(tiny, [{"name": "m", "load": "on_demand"}], gpus=["1GiB", "4GiB"], planner_packing="first_fit")
        config = config.model_copy(update={"planner": config.planner.model_copy(update={"device_order": "index"})})
        pool = make_pool(config, transport)
        await pool.start()
        try:
            await pool.load("m")
            assert pool.entries["m"].state is ModelState.READY
            assert [d.gpu for d in pool.entries["m"].launch.devices] == [1]
            assert len(transport.dry_runs) == 2  # GPU 0 refused, GPU 1 passed
        finally:
            await pool.stop()

    asyncio.run(main())


def test_the_pool_evicts_an_idle_model_when_the_measured_figure_needs_its_room(tiny):
    big = DryRun(ok=True, lines=("sched_reserve:      CUDA0 compute buffer size =  700.00 MiB",))

    async def main():
        transport = FakeTransport(lambda spec: FakeScript(dry_run=big if spec.name == "b" else None))
        config = make_config(tiny, [{"name": "a", "load": "on_demand"}, {"name": "b", "load": "on_demand"}], gpus=["2GiB"])
        pool = make_pool(config, transport)
        await pool.start()
        try:
            await pool.load("a")
            await pool.load("b")  # fits by the plan beside a; by the dry run only once a is gone
            assert pool.entries["b"].state is ModelState.READY
            assert pool.entries["a"].state is ModelState.STOPPED
        finally:
            await pool.stop()

    asyncio.run(main())


def test_the_pool_refuses_with_the_gates_reason_in_v1_models_when_nothing_makes_room(tiny):
    async def main():
        transport = FakeTransport(FakeScript(dry_run=BIG_COMPUTE))
        config = make_config(tiny, [{"name": "m", "load": "on_demand"}], gpus=["1GiB"])
        pool = make_pool(config, transport)
        await pool.start()
        try:
            with pytest.raises(ModelUnavailableError, match="load gate"):
                await pool.load("m")
            assert transport.spawned == []  # no worker was started
            assert "load gate" in pool.view(pool.entries["m"]).openai()["reason"]
        finally:
            await pool.stop()

    asyncio.run(main())


def test_load_gate_false_starts_the_worker_without_a_dry_run(tiny):
    async def main():
        transport = FakeTransport(FakeScript(dry_run=BIG_COMPUTE))
        config = make_config(tiny, [{"name": "m", "load": "on_demand"}], gpus=["1GiB"])
        config = config.model_copy(update={"planner": config.planner.model_copy(update={"load_gate": False})})
        pool = make_pool(config, transport)
        await pool.start()
        try:
            await pool.load("m")
            assert transport.dry_runs == [] and pool.entries["m"].state is ModelState.READY
        finally:
            await pool.stop()

    asyncio.run(main())


def test_an_eager_model_whose_dry_run_does_not_fit_its_planned_gpu_starts_on_another(tiny):
    async def main():
        transport = FakeTransport(FakeScript(dry_run=DryRun(ok=True, lines=("sched_reserve:      CUDA0 compute buffer size =  1500.00 MiB",))))
        config = make_config(tiny, [{"name": "m"}], gpus=["1GiB", "4GiB"], planner_packing="first_fit")
        config = config.model_copy(update={"planner": config.planner.model_copy(update={"device_order": "index"})})
        pool = make_pool(config, transport)
        assert [d.gpu for d in pool.entries["m"].launch.devices] == [0]  # the startup plan
        await pool.start()
        try:
            assert pool.entries["m"].state is ModelState.READY
            assert [d.gpu for d in pool.entries["m"].launch.devices] == [1]
            assert len(transport.dry_runs) == 2  # the planned GPU 0 refused, GPU 1 passed
        finally:
            await pool.stop()

    asyncio.run(main())


def test_an_eager_model_that_fits_nowhere_by_its_dry_run_is_left_unplaced_and_the_others_start(tiny):
    async def main():
        transport = FakeTransport(lambda spec: FakeScript(dry_run=BIG_COMPUTE if spec.name == "big" else None))
        config = make_config(tiny, [{"name": "big"}, {"name": "small"}], gpus=["2GiB"])
        pool = make_pool(config, transport)
        await pool.start()
        try:
            assert pool.entries["small"].state is ModelState.READY
            assert pool.entries["big"].state is ModelState.FAILED
            assert "load gate" in pool.view(pool.entries["big"]).openai()["reason"]
            assert [c.spec.name for c in transport.spawned] == ["small"]  # no worker for "big"
        finally:
            await pool.stop()

    asyncio.run(main())


def test_the_startup_gate_counts_the_memory_the_other_eager_models_will_take(tiny):
    """b's dry run fits the GPU alone, not beside what a was planned to take."""
    config = make_config(tiny, [{"name": "a"}, {"name": "b"}], gpus=["2GiB"])
    launches = plan_now(config)
    planned = {n: launches[n].devices[0].total_bytes for n in ("a", "b")}
    # b measured beyond its plan by half of what a leaves: fits 2 GiB alone, not beside a.
    extra = (2048 * MIB - planned["a"] - planned["b"]) // 2 + planned["a"]
    assert planned["b"] + extra <= 2048 * MIB < planned["a"] + planned["b"] + extra
    compute_mib = (launches["b"].devices[0].compute_bytes + extra) / MIB
    over = DryRun(ok=True, lines=(f"sched_reserve:      CUDA0 compute buffer size =  {compute_mib:.2f} MiB",))

    async def main():
        transport = FakeTransport(lambda spec: FakeScript(dry_run=over if spec.name == "b" else None))
        pool = make_pool(config, transport)
        await pool.start()
        try:
            assert pool.entries["a"].state is ModelState.READY
            assert pool.entries["b"].state is ModelState.FAILED and "load gate" in (pool.entries["b"].reason or "")
        finally:
            await pool.stop()

    asyncio.run(main())


def test_load_gate_false_starts_eager_models_as_planned_without_a_dry_run(tiny):
    async def main():
        transport = FakeTransport(FakeScript(dry_run=BIG_COMPUTE))
        config = make_config(tiny, [{"name": "m"}], gpus=["1GiB"])
        config = config.model_copy(update={"planner": config.planner.model_copy(update={"load_gate": False})})
        pool = make_pool(config, transport)
        await pool.start()
        try:
            assert transport.dry_runs == [] and pool.entries["m"].state is ModelState.READY
        finally:
            await pool.stop()

    asyncio.run(main())
