"""Learning from what was measured (issue 23, item 4): a model whose load needed more than planned
is planned with the measured figure from then on, kept across restarts in a small file
(gateway/placement/learning.py decides, the pool measures and acts)."""

from __future__ import annotations

import asyncio
import json
import logging

from gateway.http.app import plan_now
from gateway.observability.metrics import GatewayMetrics, ModelSnapshot
from gateway.observability.telemetry import model_snapshots
from gateway.placement.learning import LEARN_MIN_BYTES, LearnedMemory, Measurement, fingerprint
from gateway.placement.planning import inventory, model_request, plan_policy, read_models
from gateway.runtime.fake import FakeScript, FakeTransport
from gateway.runtime.pool import ModelPool
from gateway.runtime.states import ModelState
from planner.plan import plan
from planner.units import MIB
from tests.unit.runtime.pools import make_config

EXTRA_MIB = 600
WARNING = "used more GPU memory than planned"


def _planned_alone(config):
    """The model's placement by the estimate alone."""
    files = read_models(config)
    return plan([model_request(config.models[0], files.infos["m"])], inventory(config), plan_policy(config)).placements[0]


def _buffers_beyond_the_plan(config, extra_mib: float) -> dict:
    """What a worker reports when its compute buffer is ``extra_mib`` larger than planned."""
    dev = _planned_alone(config).memory.devices[0]
    return {
        "model_mib": {"CUDA0": dev.weights_bytes / MIB},
        "kv_mib": {"CUDA0": dev.kv_bytes / MIB},
        "compute_mib": {"CUDA0": dev.compute_bytes / MIB + extra_mib},
    }


def _two_gpus(tiny, **model):
    config = make_config(tiny, [{"name": "m", "load": "on_demand", **model}], gpus=["1GiB", "4GiB"], planner_packing="first_fit")
    return config.model_copy(update={"planner": config.planner.model_copy(update={"device_order": "index"})})


def test_a_model_that_used_more_than_planned_is_placed_with_the_measured_figure_next_time(tiny, tmp_path, caplog):
    config = _two_gpus(tiny)
    estimate = _planned_alone(config).memory.devices[0].total_bytes
    assert estimate + EXTRA_MIB * MIB > 1024 * MIB  # by the measured figure it no longer fits GPU 0
    transport = FakeTransport(FakeScript(allocated=_buffers_beyond_the_plan(config, EXTRA_MIB)))
    learned = LearnedMemory(tmp_path / "learned.json")

    async def main():
        pool = ModelPool(config, plan_now(config), base_env={}, transport=transport, learned=learned)
        await pool.start()
        try:
            await pool.load("m")
            first = pool.entries["m"].launch
            assert [d.gpu for d in first.devices] == [0] and first.devices[0].learned_bytes == 0
            entry = pool.view(pool.entries["m"]).openai()["memory"]
            assert entry["devices"][0]["plan_error_bytes"] >= EXTRA_MIB * MIB - MIB
            assert entry["learned_bytes"] >= EXTRA_MIB * MIB - MIB
            await pool.unload("m")
            await pool.load("m")
            second = pool.entries["m"].launch
            assert [d.gpu for d in second.devices] == [1]  # the learned figure moved it
            assert second.devices[0].learned_bytes == learned.bytes_for(config.models[0])
            assert second.devices[0].total_bytes == second.devices[0].estimate_bytes + second.devices[0].learned_bytes
            # Planned with the measured figure, the load now meets its plan.
            assert abs(pool.view(pool.entries["m"]).plan_error_bytes[1]) < LEARN_MIN_BYTES
        finally:
            await pool.stop()

    with caplog.at_level(logging.INFO, logger="gateway"):
        asyncio.run(main())
    assert [r.levelno for r in caplog.records if WARNING in r.getMessage()] == [logging.WARNING]  # once


def test_the_learned_figure_is_kept_in_its_file_and_plans_the_eager_models_after_a_restart(tiny, tmp_path):
    config = make_config(tiny, [{"name": "m"}], gpus=["4GiB"])
    path = tmp_path / "state" / "learned.json"
    transport = FakeTransport(FakeScript(allocated=_buffers_beyond_the_plan(config, EXTRA_MIB)))

    async def main():
        learned = LearnedMemory(path)
        pool = ModelPool(config, plan_now(config, learned), base_env={}, transport=transport, learned=learned)
        await pool.start()
        await pool.stop()

    asyncio.run(main())
    doc = json.loads(path.read_text())
    assert set(doc["models"]) == {"m"} and doc["models"]["m"]["fingerprint"] == fingerprint(config.models[0])
    assert [p.name for p in path.parent.iterdir()] == ["learned.json"]  # no temporary file left
    after_restart = plan_now(config, LearnedMemory.load(path))["m"]
    assert after_restart.devices[0].learned_bytes >= EXTRA_MIB * MIB - MIB
    assert plan_now(config)["m"].devices[0].learned_bytes == 0  # without the file: the estimate


def test_a_figure_learned_with_other_settings_does_not_apply(tiny, tmp_path):
    config = make_config(tiny, [{"name": "m", "n_ctx": 256}])
    learned = LearnedMemory(tmp_path / "learned.json")
    learned.record(config.models[0], Measurement(estimate={0: 100 * MIB}, measured={0: 300 * MIB}, learned={0: 0}))
    assert learned.bytes_for(config.models[0]) == 200 * MIB
    assert learned.bytes_for(make_config(tiny, [{"name": "m", "n_ctx": 512}]).models[0]) == 0
    assert LearnedMemory.load(learned.path).bytes_for(config.models[0]) == 200 * MIB


def test_a_load_that_meets_its_estimate_again_drops_the_learned_figure(tiny, tmp_path):
    model = make_config(tiny, [{"name": "m"}]).models[0]
    learned = LearnedMemory(tmp_path / "learned.json")
    learned.record(model, Measurement(estimate={0: 100 * MIB}, measured={0: 300 * MIB}, learned={0: 0}))
    learned.record(model, Measurement(estimate={0: 100 * MIB}, measured={0: 100 * MIB + MIB}, learned={0: 200 * MIB}))
    assert learned.bytes_for(model) == 0
    assert json.loads(learned.path.read_text())["models"] == {}


def test_an_unreadable_learned_file_is_named_in_a_warning_and_the_estimates_hold(tiny, tmp_path, caplog):
    path = tmp_path / "learned.json"
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="gateway"):
        learned = LearnedMemory.load(path)
    assert learned.bytes_for(make_config(tiny, [{"name": "m"}]).models[0]) == 0
    assert any(str(path) in r.getMessage() for r in caplog.records)


def test_a_worker_that_reports_nothing_on_a_gpu_teaches_nothing(tiny, tmp_path):
    config = make_config(tiny, [{"name": "m"}], gpus=["4GiB"])
    learned = LearnedMemory(tmp_path / "learned.json")

    async def main():
        pool = ModelPool(config, plan_now(config), base_env={}, transport=FakeTransport(), learned=learned)
        await pool.start()
        try:
            assert pool.entries["m"].state is ModelState.READY
            assert pool.view(pool.entries["m"]).memory_json()["devices"][0]["measured_bytes"] is None
        finally:
            await pool.stop()

    asyncio.run(main())
    assert not learned.path.exists()


def test_plan_error_and_learned_bytes_are_exported_per_model_and_gpu(tiny, tmp_path):
    config = make_config(tiny, [{"name": "m"}], gpus=["4GiB"])
    transport = FakeTransport(FakeScript(allocated=_buffers_beyond_the_plan(config, EXTRA_MIB)))
    scraped: dict = {}

    async def main():
        learned = LearnedMemory()
        pool = ModelPool(config, plan_now(config), base_env={}, transport=transport, learned=learned)
        await pool.start()
        try:
            snapshots: list[ModelSnapshot] = model_snapshots(pool)
            body, _ = GatewayMetrics(lambda: snapshots, lambda: []).render()
            scraped["text"] = body.decode()
        finally:
            await pool.stop()

    asyncio.run(main())
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in scraped["text"].splitlines() if line.startswith("vram_gateway_model_")}
    error = lines['vram_gateway_model_plan_error_bytes{gpu="0",gpu_uuid="",model="m"}']
    assert EXTRA_MIB * MIB - MIB <= error <= EXTRA_MIB * MIB + MIB
    assert lines['vram_gateway_model_learned_bytes{model="m"}'] == error
    assert 'vram_gateway_model_measured_bytes{gpu="0",gpu_uuid="",model="m"}' in lines
