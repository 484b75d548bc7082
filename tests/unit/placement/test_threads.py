"""Threads per model engine (gateway.placement.threads)."""

import pytest

from gateway.placement.threads import GPU_MODEL_THREADS, Threads, configured_threads, default_threads
from planner.devices import declared_devices
from planner.plan import ModelRequest, plan
from testkit.factories import model_info


def _placements(*models, gpus=()):
    """Place (name, n_gpu_layers) models on declared GPUs (none: the CPU)."""
    requests = [ModelRequest(name=n, info=model_info(n_layers=8, layer_mib=50, name=n), n_gpu_layers=ngl) for n, ngl in models]
    return plan(requests, declared_devices(list(gpus)) if gpus else []).placements


def test_one_cpu_model_gets_every_core():
    assert default_threads(_placements(("a", -1)), 16) == {"a": Threads(16, 16)}


def test_cpu_models_started_together_share_the_cores():
    threads = default_threads(_placements(("a", -1), ("b", -1), ("c", -1), ("d", -1)), 16)
    assert set(threads.values()) == {Threads(4, 4)}


def test_cores_that_do_not_divide_evenly_go_to_the_first_models():
    threads = default_threads(_placements(("a", -1), ("b", -1), ("c", -1)), 16)
    assert [threads[n].n_threads for n in "abc"] == [6, 5, 5]


def test_more_cpu_models_than_cores_get_one_thread_each():
    threads = default_threads(_placements(("a", -1), ("b", -1), ("c", -1)), 2)
    assert [threads[n].n_threads for n in "abc"] == [1, 1, 1]


def test_a_model_wholly_on_gpus_gets_few_threads_and_leaves_the_cores_to_cpu_models():
    placements = _placements(("gpu", -1), ("cpu", 0), gpus=("24GiB",))
    assert [p.gpus for p in placements] == [(0,), ()]
    assert default_threads(placements, 16) == {"gpu": Threads(GPU_MODEL_THREADS, GPU_MODEL_THREADS), "cpu": Threads(16, 16)}


def test_a_partly_offloaded_model_computes_on_the_cpu_and_shares_the_cores():
    placements = _placements(("partial", 4), ("cpu", 0), gpus=("24GiB",))
    assert placements[0].gpus == (0,) and placements[0].n_gpu_layers == 4
    assert default_threads(placements, 16) == {"partial": Threads(8, 8), "cpu": Threads(8, 8)}


def test_cpu_models_already_running_count_in_the_share():
    assert default_threads(_placements(("new", -1)), 16, cpu_models_running=3) == {"new": Threads(4, 4)}


def test_a_machine_with_one_core_gives_gpu_models_one_thread():
    assert default_threads(_placements(("gpu", -1), gpus=("24GiB",)), 1) == {"gpu": Threads(1, 1)}


@pytest.mark.parametrize(
    ("n_threads", "n_threads_batch", "expected"),
    [
        (None, None, Threads(8, 8)),
        (4, None, Threads(4, 4)),  # n_threads_batch follows a configured n_threads, as in llama.cpp
        (None, 2, Threads(8, 2)),
        (4, 12, Threads(4, 12)),
    ],
)
def test_configured_threads_override_the_default_for_that_model(n_threads, n_threads_batch, expected):
    assert configured_threads(Threads(8, 8), n_threads, n_threads_batch) == expected
