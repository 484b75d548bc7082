"""The on-demand eviction benchmark's simulation (bench/ondemand.py): it runs, its counts add up,
and no policy ever places models over a GPU's budget. Fast: a few hundred requests."""

from __future__ import annotations

import pytest

from bench.ondemand import (
    BOXES,
    SHAPES,
    LoadParams,
    Request,
    TraceParams,
    Box,
    Result,
    average_model_k,
    beats_every_baseline,
    budgets,
    count_lru,
    expected_cost,
    make_trace,
    memory_first,
    model_request,
    simulate,
)
from planner.devices import declared_devices
from planner.plan import PlanPolicy

PARAMS = TraceParams(seed=3, n_requests=300)
POLICY = PlanPolicy()


def _checked_run(box, policy_fn, name, trace=None):
    devices = declared_devices(box.gpus)
    models = box.models()
    trace = trace if trace is not None else make_trace(models, PARAMS)
    limit = budgets(devices, POLICY)
    steps = []

    def on_step(now, residents):
        used = {}
        for r in residents.values():
            for g, b in r.per_gpu:
                used[g] = used.get(g, 0) + b
        for g, b in used.items():
            assert b <= limit[g], f"{name}: GPU {g} planned {b} bytes > budget {limit[g]} at t={now:.1f}"
        steps.append(now)

    result = simulate(trace, models, devices, policy_fn, name=name, plan_policy=POLICY, on_step=on_step)
    return result, trace, steps


def _policies(box):
    k, _ = average_model_k(box.models(), declared_devices(box.gpus), POLICY)
    return [
        ("expected-cost", expected_cost),
        ("memory-first", memory_first),
        (f"count-LRU K={k}", count_lru(k)),
        ("memory-LRU", count_lru(None)),
    ]


@pytest.mark.parametrize("box_name", sorted(BOXES))
def test_counts_add_up_and_memory_is_never_exceeded(box_name):
    box = BOXES[box_name]
    for name, fn in _policies(box):
        r, trace, steps = _checked_run(box, fn, name)
        assert r.requests == len(trace) == PARAMS.n_requests
        # Every request is a hit, the request that started a load, or one that waited on that load.
        assert r.hits + r.joined + r.loads == r.requests
        assert r.triggered == r.loads
        # Only loaded models are evicted: what is left loaded at the end accounts for the rest.
        assert r.evictions == r.loads - r.resident_end <= r.loads
        assert r.count_oom <= r.loads
        assert r.over_budget_steps == 0
        assert len(steps) == r.loads  # checked after every load (and its evictions)
        assert r.evictions > 0, "the scenario must need evictions"
        assert all(w >= 0 for w in r.waits)
        assert 0 < r.hit_rate < 1


def test_sequential_trace_hits_plus_loads_equals_requests():
    """With requests far apart (each ends before the next), nothing joins: hits + loads == requests,
    and each miss waits exactly its model's load time."""
    box = BOXES["A"]
    models = box.models()
    spread = [Request(i * 1000.0, r.model, r.duration_s) for i, r in enumerate(make_trace(models, PARAMS)[:200])]
    load = LoadParams()
    by_name = {m.name: m for m in models}
    for name, fn in _policies(box):
        r, trace, _ = _checked_run(box, fn, name, trace=spread)
        assert r.joined == 0 and r.blocked == 0
        assert r.hits + r.loads == r.requests
        for req, w in zip(trace, r.waits):
            assert w == 0 or w == pytest.approx(load.load_s(by_name[req.model]))
        assert sum(w > 0 for w in r.waits) == r.loads


def test_count_limit_alone_would_oom_and_lru_evicts_more():
    """One 24 GiB GPU, K = 2: two 14B models, then a 32B. Evicting one by count leaves 10.4 + 21.0
    GiB on a 23 GiB budget: the count limit alone would OOM, so LRU evicts the second 14B too."""
    from bench.ondemand import Box

    box = Box("t", ("24GiB",), (("14B", 2), ("32B", 1)))
    trace = [Request(0.0, "14b-a", 1.0), Request(100.0, "14b-b", 1.0), Request(200.0, "32b-a", 1.0)]
    r, _, _ = _checked_run(box, count_lru(2), "count-LRU K=2", trace=trace)
    assert (r.loads, r.evictions, r.count_oom) == (3, 2, 1)
    for name, fn in (("expected-cost", expected_cost), ("memory-first", memory_first)):
        m, _, _ = _checked_run(box, fn, name, trace=trace)
        assert (m.loads, m.evictions) == (3, 2)


def test_busy_models_are_not_evicted_the_load_waits():
    """The 32B needs the whole GPU; a long request keeps a 14B busy, so the load waits for it."""
    from bench.ondemand import Box

    box = Box("t", ("24GiB",), (("14B", 1), ("32B", 1)))
    trace = [Request(0.0, "14b-a", 60.0), Request(10.0, "32b-a", 1.0)]
    load = LoadParams()
    for name, fn in (("expected-cost", expected_cost), ("memory-first", memory_first), ("count-LRU", count_lru(2))):
        r, _, _ = _checked_run(box, fn, name, trace=trace)
        assert r.blocked == 1 and r.evictions == 1
        load_14b = load.load_s(model_request("x", SHAPES["14B"]))
        load_32b = load.load_s(model_request("x", SHAPES["32B"]))
        # 14B ready at load_14b, its request ends 60 s later; then the 32B loads.
        assert r.waits[1] == pytest.approx(load_14b + 60.0 - 10.0 + load_32b)


def test_trace_is_deterministic_and_k_is_the_average_model():
    models = BOXES["A"].models()
    assert make_trace(models, PARAMS) == make_trace(models, PARAMS)
    assert make_trace(models, PARAMS) != make_trace(models, TraceParams(seed=4, n_requests=300))
    k, mean = average_model_k(models, declared_devices(BOXES["A"].gpus), POLICY)
    assert k == int(sum(budgets(declared_devices(BOXES["A"].gpus), POLICY).values()) // mean)
    assert 1 < k < len(models)


def test_the_budget_check_catches_a_policy_that_ignores_memory():
    """A negative control: placing against the empty box every time must trip the check."""
    from bench.ondemand import Decision
    from planner.plan import plan

    def reckless(req, devices, residents, idle, policy, now, usage):
        return Decision((), plan([req], devices, policy).placements[0])

    box = BOXES["A"]
    with pytest.raises(AssertionError, match="budget"):
        _checked_run(box, reckless, "reckless")


def test_the_simulation_keeps_what_the_gateway_keeps_per_model():
    """Every request's arrival counts in its model's rate, loaded or not, and across unloads; the
    load time is the last load's start to ready."""
    box = Box("t", ("24GiB",), (("14B", 1), ("32B", 1)))
    trace = [Request(0.0, "14b-a", 1.0), Request(0.5, "14b-a", 1.0), Request(100.0, "32b-a", 1.0), Request(200.0, "14b-a", 1.0)]
    r, _, _ = _checked_run(box, expected_cost, "expected-cost", trace=trace)
    assert (r.loads, r.evictions) == (3, 2)  # the 32B and the 14B cannot share the GPU
    load = LoadParams()
    assert r.usage["14b-a"].load_s == pytest.approx(load.load_s(model_request("x", SHAPES["14B"])))
    assert r.usage["14b-a"].requests.at == 200.0
    # Three requests (two in the first load's wait): the long memory still holds nearly all three.
    assert 2.9 < r.usage["14b-a"].requests.popular <= 3.0
    assert r.usage["32b-a"].requests.at == 100.0


def test_expected_cost_keeps_the_model_in_use_that_memory_first_evicts():
    """One 24 GiB GPU holds a 14B and two 8Bs. A third 8B needs room while the 14B is asked for
    every 10 s and the other 8Bs sit unused: memory-first evicts the 14B (it frees the most) and
    its next request waits for it to load again; expected-cost evicts the coldest 8B."""
    box = Box("t", ("24GiB",), (("14B", 1), ("8B", 3)))
    trace = [Request(0.0, "8b-a", 1.0), Request(5.0, "8b-b", 1.0)]
    trace += [Request(10.0 * i, "14b-a", 1.0) for i in range(1, 21)]
    trace += [Request(205.0, "8b-c", 1.0), Request(210.0, "14b-a", 1.0)]
    trace.sort(key=lambda q: q.t)
    ours, _, _ = _checked_run(box, expected_cost, "expected-cost", trace=trace)
    old, _, _ = _checked_run(box, memory_first, "memory-first", trace=trace)
    assert (ours.loads, ours.evictions) == (4, 1)
    assert (old.loads, old.evictions) == (5, 2)
    assert ours.waits[-1] == 0 < old.waits[-1]
    assert ours.mean_wait < old.mean_wait


def test_beats_every_baseline_needs_strictly_fewer_loads_and_strictly_less_wait():
    def result(loads, wait):
        return Result("x", requests=1, loads=loads, waits=[wait])

    assert beats_every_baseline([result(9, 1.0), result(10, 2.0), result(12, 1.5)]) == (True, True)
    assert beats_every_baseline([result(10, 1.0), result(10, 2.0)]) == (False, True)
    assert beats_every_baseline([result(9, 2.0), result(10, 2.0)]) == (True, False)
