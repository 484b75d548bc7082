"""From a model's config to its worker: the one mapping (gateway.placement.mapping) and the
launch that carries the plan and the threads (gateway.placement.launch)."""

import dataclasses

import pytest

from gateway.config.schema import ModelConfig
from gateway.engine.protocol import WorkerSpec
from gateway.placement.launch import decode_launches, encode_launches, launch_from_placement, launches_from_plan
from gateway.placement.mapping import CONTEXT_KEYS, model_request, run_settings, worker_context
from planner.devices import declared_devices
from planner.memory import RunSettings
from planner.plan import plan
from testkit.factories import model_info

# Every key set away from its default, so a key that is not carried shows.
CONFIG = ModelConfig.model_validate(
    {
        "name": "chat",
        "path": "/models/chat.gguf",
        "n_ctx": 8192,
        "n_batch": 1024,
        "n_ubatch": 256,
        "flash_attn": True,
        "type_k": "q8_0",
        "type_v": "q8_0",
        "swa_full": True,
        "use_mmap": False,
        "use_mlock": True,
        "chat_format": "chatml",
        "embedding": True,
        "pooling": "mean",
        "max_concurrency": 4,
        "kv_unified": True,
        "kv_pool_tokens": 16384,
        "n_threads": 3,
        "n_threads_batch": 5,
        "priority": 2,
        "allow_cpu_offload": True,
        "max_vram_mib": 20000,
        "gpus": [0],
    }
)


def _launch(config: ModelConfig = CONFIG, gpus=("24GiB",), cpu_count: int = 16):
    placed = plan([model_request(config, model_info(n_layers=8, layer_mib=50))], declared_devices(list(gpus)))
    return launches_from_plan(placed, {config.name: config.path}, cpu_count=cpu_count)[config.name]


def test_context_keys_have_one_name_in_the_config_the_planner_and_the_worker():
    for key in CONTEXT_KEYS:
        assert key in ModelConfig.model_fields
        assert key in {f.name for f in dataclasses.fields(RunSettings)}
        assert key in {f.name for f in dataclasses.fields(WorkerSpec)}


def test_run_settings_size_one_context_of_max_concurrency_slots():
    s = run_settings(CONFIG)
    assert {key: getattr(s, key) for key in CONTEXT_KEYS} == {key: getattr(CONFIG, key) for key in CONTEXT_KEYS}
    assert (s.slots, s.kv_unified, s.kv_pool_tokens, s.kv_cells) == (4, True, 16384, 16384)
    plain = run_settings(ModelConfig(name="m", path="/m.gguf", n_ctx=2048, max_concurrency=8))
    assert (plain.slots, plain.kv_unified, plain.kv_pool_tokens, plain.kv_cells) == (8, False, None, 16384)


def test_model_request_carries_the_placement_keys():
    req = model_request(CONFIG, model_info())
    assert req.settings == run_settings(CONFIG)
    assert (req.priority, req.allow_cpu_offload, req.gpus, req.max_vram_bytes) == (2, True, (0,), 20000 * 1024 * 1024)


def test_worker_spec_fills_every_field_from_the_plan_the_config_and_the_launch():
    spec = _launch().worker_spec(CONFIG)
    filled = {
        # the context the planner sized, under the config's own names
        *CONTEXT_KEYS, "slots", "kv_pool_tokens",
        # where the plan put it
        "n_gpu_layers", "split_mode", "tensor_split", "gpu_indices",
        # the launch's threads, or the config's
        "n_threads", "n_threads_batch",
        # what only the worker reads
        "name", "model_path", "use_mlock", "chat_format", "pooling",
    }  # fmt: skip
    assert {f.name for f in dataclasses.fields(WorkerSpec)} == filled
    assert {key: getattr(spec, key) for key in CONTEXT_KEYS} == {key: getattr(CONFIG, key) for key in CONTEXT_KEYS}
    assert (spec.slots, spec.kv_pool_tokens) == (4, 16384)
    assert (spec.n_gpu_layers, spec.split_mode, spec.tensor_split, spec.gpu_indices) == (-1, "layer", None, [0])
    assert (spec.n_threads, spec.n_threads_batch) == (3, 5)
    assert (spec.name, spec.model_path, spec.use_mlock, spec.chat_format, spec.pooling) == (
        "chat", "/models/chat.gguf", True, "chatml", "mean",
    )  # fmt: skip


def test_worker_runs_the_context_the_planner_sized():
    config = ModelConfig(name="m", path="/m.gguf", n_ctx=2048, max_concurrency=8)
    spec = _launch(config).worker_spec(config)
    assert {key: getattr(spec, key) for key in worker_context(run_settings(config))} == worker_context(run_settings(config))
    # Always explicit: n_ctx x slots when each slot has its own stream.
    assert (spec.slots, spec.kv_unified, spec.kv_pool_tokens) == (8, False, 16384)


def test_launch_threads_are_used_where_the_config_sets_none():
    config = ModelConfig(name="m", path="/m.gguf")
    on_gpu = _launch(config).worker_spec(config)
    on_cpu = _launch(config, gpus=(), cpu_count=6).worker_spec(config)
    assert (on_gpu.n_threads, on_gpu.n_threads_batch) == (2, 2)
    assert (on_cpu.n_threads, on_cpu.n_threads_batch) == (6, 6)


def test_launches_keep_their_threads_through_json():
    launch = _launch(ModelConfig(name="m", path="/m.gguf"), gpus=(), cpu_count=6)
    assert decode_launches(encode_launches({"m": launch})) == {"m": launch}


def test_a_model_loaded_alone_shares_the_cores_with_the_cpu_models_already_running():
    config = ModelConfig(name="m", path="/m.gguf")
    placed = plan([model_request(config, model_info(n_layers=8, layer_mib=50))], [])
    launch = launch_from_placement(placed.placements[0], "/m.gguf", cpu_count=12, cpu_models_running=2)
    assert (launch.computes_on_cpu, launch.n_threads, launch.n_threads_batch) == (True, 4, 4)


@pytest.mark.parametrize("cpu_count", [0, -1])
def test_cpu_count_must_be_positive(cpu_count):
    with pytest.raises(ValueError, match="cpu_count"):
        _launch(gpus=(), cpu_count=cpu_count)
