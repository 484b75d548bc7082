"""Placement decisions in a running gateway (gateway.placement.decisions): pure functions of the
pool's facts, so each rule is checked here without a pool, a worker or a clock."""

from __future__ import annotations

from gateway.placement.decisions import Place, Refuse, Resident, cpu_models_running, free_devices, place, running_load
from gateway.runtime.states import HOLDS_MEMORY, ModelState
from planner.devices import DevicePolicy, declared_devices
from planner.memory import RunSettings
from planner.plan import ModelRequest, PlanPolicy
from testkit.factories import GIB, model_info

POLICY = PlanPolicy(devices=DevicePolicy(reserve_mib=0, min_budget_mib=0))
NEW = ModelRequest(name="new", info=model_info(n_layers=8, layer_mib=256, name="new"), settings=RunSettings(n_ctx=1024))  # ~2.9 GiB


def resident(name: str, gib: float, gpu: int = 0, **kw) -> Resident:
    return Resident(name, {gpu: int(gib * GIB)}, kw.pop("holds_memory", True), kw.pop("computes_on_cpu", False), kw.pop("weight", None), **kw)


def test_a_stopping_worker_holds_its_memory_and_a_failed_or_stopped_one_does_not():
    assert HOLDS_MEMORY == {ModelState.STARTING, ModelState.READY, ModelState.STOPPING}
    assert [s for s in ModelState if s.holds_memory] == [ModelState.STARTING, ModelState.READY, ModelState.STOPPING]


def test_a_declared_inventory_loses_what_the_models_that_stay_hold():
    devices = declared_devices(["8GiB", "8GiB"])
    residents = [resident("a", 3), resident("b", 2, gpu=1), resident("gone", 1, holds_memory=False)]
    free = free_devices(devices, residents, declared=True, leaving=set())
    assert [d.free_bytes for d in free] == [5 * GIB, 6 * GIB]
    # A model about to leave gives its memory back.
    assert [d.free_bytes for d in free_devices(devices, residents, declared=True, leaving={"a"})] == [8 * GIB, 6 * GIB]


def test_nvml_free_memory_gets_back_only_what_the_leaving_models_hold():
    devices = declared_devices(["8GiB/3GiB"])  # as NVML would say: the running models already counted
    residents = [resident("a", 3), resident("b", 2)]
    assert free_devices(devices, residents, declared=False, leaving=set())[0].free_bytes == 3 * GIB
    assert free_devices(devices, residents, declared=False, leaving={"a"})[0].free_bytes == 6 * GIB


def test_nvml_free_memory_loses_the_whole_plan_of_a_model_still_loading():
    # NVML shows only what a loading model allocated so far (here nothing): its plan is taken away.
    devices = declared_devices(["8GiB/5GiB"])  # "a" (3 GiB) counted by NVML; "loading" not yet
    residents = [resident("a", 3), resident("loading", 4, allocating=True)]
    assert free_devices(devices, residents, declared=False, leaving=set())[0].free_bytes == 1 * GIB
    assert isinstance(place(NEW, devices, residents, POLICY, declared=False, gpus=None, now=0.0), Refuse)
    # Declared inventories counted it already: nothing changes there.
    assert free_devices(declared_devices(["8GiB"]), residents, declared=True, leaving=set())[0].free_bytes == 1 * GIB


def test_the_load_on_each_gpu_is_the_weight_of_the_models_that_stay_and_hold_memory():
    residents = [
        resident("a", 4, weight=3.0),
        Resident("split", {0: 1 * GIB, 1: 3 * GIB}, True, False, None),
        resident("stopped", 5, gpu=1, holds_memory=False),
    ]
    assert running_load(residents, leaving=set()) == {0: 4.0, 1: 3.0}
    assert running_load(residents, leaving={"a"}) == {0: 1.0, 1: 3.0}


def test_cpu_models_that_keep_running_share_the_cores():
    residents = [resident("a", 1, computes_on_cpu=True), resident("b", 1, computes_on_cpu=True), resident("c", 1)]
    assert cpu_models_running(residents, leaving={"b"}) == 1


def test_a_model_that_fits_beside_the_others_evicts_nothing():
    decision = place(NEW, declared_devices(["8GiB"]), [resident("a", 3, evictable=True)], POLICY, declared=True, gpus=None, now=10.0)
    assert isinstance(decision, Place) and decision.evict == () and decision.placement.name == "new"


def test_the_least_recently_used_idle_model_that_makes_room_is_evicted_and_only_it():
    residents = [resident("a", 3, evictable=True, last_used=1.0), resident("b", 3, evictable=True, last_used=2.0)]
    decision = place(NEW, declared_devices(["8GiB"]), residents, POLICY, declared=True, gpus=None, now=10.0)
    assert isinstance(decision, Place) and decision.evict == ("a",)


def test_a_model_that_may_not_be_evicted_is_never_chosen():
    residents = [resident("busy", 3, last_used=1.0), resident("b", 3, evictable=True, last_used=2.0)]
    decision = place(NEW, declared_devices(["8GiB"]), residents, POLICY, declared=True, gpus=None, now=10.0)
    assert isinstance(decision, Place) and decision.evict == ("b",)


def test_a_model_frees_only_what_it_holds_on_the_gpus_the_new_model_may_use():
    # "other" is idle and bigger, but on GPU 1, which the new model may not use.
    residents = [resident("here", 6, evictable=True, last_used=5.0), resident("other", 8, gpu=1, evictable=True, last_used=1.0)]
    decision = place(NEW, declared_devices(["8GiB", "8GiB"]), residents, POLICY, declared=True, gpus=[0], now=10.0)
    assert isinstance(decision, Place) and decision.evict == ("here",)


def test_a_model_that_cannot_be_placed_even_after_every_eviction_is_refused_with_the_planners_words():
    decision = place(NEW, declared_devices(["8GiB"]), [resident("eager", 6)], POLICY, declared=True, gpus=None, now=10.0)
    assert isinstance(decision, Refuse)
    assert any("'new' does not fit" in p for p in decision.problems)
