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
    average_model_k,
    budgets,
    count_lru,
    make_trace,
    memory_aware,
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
    return [("memory-aware", memory_aware), (f"count-LRU K={k}", count_lru(k)), ("memory-LRU", count_lru(None))]


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
    m, _, _ = _checked_run(box, memory_aware, "memory-aware", trace=trace)
    assert (m.loads, m.evictions) == (3, 2)


def test_busy_models_are_not_evicted_the_load_waits():
    """The 32B needs the whole GPU; a long request keeps a 14B busy, so the load waits for it."""
    from bench.ondemand import Box

    box = Box("t", ("24GiB",), (("14B", 1), ("32B", 1)))
    trace = [Request(0.0, "14b-a", 60.0), Request(10.0, "32b-a", 1.0)]
    load = LoadParams()
    for name, fn in (("memory-aware", memory_aware), ("count-LRU", count_lru(2))):
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

    def reckless(req, devices, residents, idle, policy):
        return Decision((), plan([req], devices, policy).placements[0])

    box = BOXES["A"]
    with pytest.raises(AssertionError, match="budget"):
        _checked_run(box, reckless, "reckless")
