"""The eviction choice (planner.eviction): expected reload cost per byte freed, priority first,
eager and busy models never, and the request rate the gateway keeps per model."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.eviction import (
    POPULAR_HALF_LIFE_S,
    RECENT_HALF_LIFE_S,
    EvictionCandidate,
    RequestRate,
    choose_evictions,
    rank,
)

GIB = 1024**3


def rate(*times: float) -> RequestRate:
    r = RequestRate()
    for t in times:
        r = r.observe(t)
    return r


def cand(name, gib, *, priority=0, last_used=0.0, load_s=None, requests=None, eager=False, busy=False):
    return EvictionCandidate(name, int(gib * GIB), priority, last_used, load_s, requests, eager, busy)


def fits_when_freed(need_gib, cands):
    """One GPU: the new model fits once the evicted models free ``need_gib``."""
    sizes = {c.name: c.freed_bytes for c in cands}
    return lambda names: sum(sizes[n] for n in names) >= need_gib * GIB


# --- The request rate ---------------------------------------------------------------------------


def test_a_steady_stream_reads_as_its_rate():
    r = rate(*[10.0 * i for i in range(2000)])  # one request every 10 s for 5.5 h
    # Read between requests (5 s after the last): the short memory sees ~0.1/s too.
    assert r.per_second(19_995.0) == pytest.approx(0.1, rel=0.05)


def test_counts_halve_every_half_life_and_a_request_adds_one():
    r = rate(100.0)
    assert (r.recent, r.popular, r.at) == (1.0, 1.0, 100.0)
    later = r.observe(100.0 + RECENT_HALF_LIFE_S)
    assert later.recent == pytest.approx(1.5)
    assert later.popular == pytest.approx(1.0 + 2 ** (-RECENT_HALF_LIFE_S / POPULAR_HALF_LIFE_S))


def test_the_rate_falls_with_silence_fast_at_first_then_slowly():
    r = rate(0.0)
    assert r.per_second(0.0) > r.per_second(60.0) > r.per_second(3600.0) > r.per_second(7200.0) > 0
    # A minute of silence mostly forgets the conversation, not the popularity.
    assert r.per_second(60.0) / r.per_second(0.0) < 0.1
    assert r.per_second(7200.0) / r.per_second(3600.0) == pytest.approx(0.5, rel=1e-6)


def test_a_clock_that_steps_back_does_not_inflate_the_rate():
    r = rate(100.0)
    assert r.per_second(50.0) == r.per_second(100.0)
    assert r.observe(50.0).at == 100.0


@given(st.lists(st.floats(0, 10_000, allow_nan=False), max_size=40), st.floats(0, 5_000))
def test_the_running_counters_equal_the_sum_over_all_requests(times, after):
    times = sorted(times)
    now = (times[-1] if times else 0.0) + after
    expected = sum(
        0.5 * math.log(2) * (2 ** (-(now - t) / RECENT_HALF_LIFE_S) / RECENT_HALF_LIFE_S
                             + 2 ** (-(now - t) / POPULAR_HALF_LIFE_S) / POPULAR_HALF_LIFE_S)
        for t in times
    )
    assert rate(*times).per_second(now) == pytest.approx(expected, rel=1e-9, abs=1e-300)


# --- The choice -----------------------------------------------------------------------------------


def test_keeps_the_busy_big_model_that_is_slow_to_load_and_evicts_the_cold_ones():
    """The old rule evicted the 32B (it frees the most); it is asked for every few seconds and
    takes 11 s to load, while the two 8Bs have not been asked for in an hour."""
    now = 4000.0
    hot_big = cand("32b", 21, load_s=11.4, requests=rate(*range(3000, 4000, 5)), last_used=3995)
    cold = [cand(n, 6.2, load_s=4.0, requests=rate(100.0), last_used=130) for n in ("8b-a", "8b-b")]
    cands = [hot_big, *cold]
    assert choose_evictions(cands, fits_when_freed(10, cands), now=now) == ["8b-a", "8b-b"]


def test_one_big_eviction_beats_several_small_ones_even_when_they_cost_a_little_less_in_total():
    """Three 2 GiB models (1.7 s each, 5.1 s together) against one 8 GiB model (5.5 s), all asked
    for alike: the big one is cheaper per byte, so one eviction, not three (each is a later load)."""
    r = rate(0.0, 50.0)
    small = [cand(f"s{i}", 2, load_s=1.7, requests=r, last_used=60) for i in range(3)]
    big = cand("big", 8, load_s=5.5, requests=r, last_used=60)
    cands = [*small, big]
    assert choose_evictions(cands, fits_when_freed(6, cands), now=100.0) == ["big"]


def test_a_conversation_going_on_is_kept_over_a_model_popular_an_hour_ago():
    now = 5000.0
    talking = cand("talking", 6, load_s=4.0, requests=rate(4970.0, 4990.0), last_used=4995)
    was_popular = cand("was-popular", 6, load_s=4.0, requests=rate(*range(0, 600, 20)), last_used=600)
    cands = [talking, was_popular]
    assert choose_evictions(cands, fits_when_freed(5, cands), now=now) == ["was-popular"]


def test_frequency_counts_when_recency_is_equal():
    often = cand("often", 6, load_s=4.0, requests=rate(*range(0, 1000, 10)), last_used=1000)
    once = cand("once", 6, load_s=4.0, requests=rate(990.0), last_used=1000)
    cands = [often, once]
    assert choose_evictions(cands, fits_when_freed(5, cands), now=1200.0) == ["once"]


def test_a_lower_priority_goes_first_however_hot():
    now = 1000.0
    hot_low = cand("hot-low", 6, priority=0, load_s=20.0, requests=rate(*range(900, 1000, 2)), last_used=999)
    cold_high = cand("cold-high", 6, priority=1, load_s=1.0, requests=rate(0.0), last_used=1)
    cands = [cold_high, hot_low]
    assert choose_evictions(cands, fits_when_freed(5, cands), now=now) == ["hot-low"]


def test_a_higher_priority_goes_only_when_the_lower_ones_cannot_make_room_and_they_top_it_up():
    cands = [cand("low-a", 2, priority=0), cand("low-b", 2, priority=0), cand("high", 8, priority=1)]
    # 10 GiB: all low ones (4) are not enough; "high" (8) is, with 2 of the low ones topping it up.
    chosen = choose_evictions(cands, fits_when_freed(10, cands))
    assert "high" in chosen and len(chosen) == 2
    # 3 GiB: the two low ones make room, "high" stays.
    assert sorted(choose_evictions(cands, fits_when_freed(3, cands))) == ["low-a", "low-b"]


def test_eager_busy_and_useless_models_are_never_evicted():
    cands = [cand("eager", 50, eager=True), cand("busy", 50, busy=True), cand("elsewhere", 0), cand("idle", 4)]
    assert choose_evictions(cands, fits_when_freed(4, cands)) == ["idle"]
    assert choose_evictions(cands, fits_when_freed(5, cands)) is None


def test_gives_back_an_early_choice_the_final_set_does_not_need():
    # "wide" is the cheapest per byte but the fit is decided by a specific model's GPU.
    cands = [cand("wide", 8, requests=rate(0.0)), cand("key", 2, requests=rate(100.0))]
    assert rank(cands, 100.0)[0].candidate.name == "wide"
    assert choose_evictions(cands, lambda names: "key" in names, now=100.0) == ["key"]


def test_none_when_evicting_everything_is_not_enough():
    cands = [cand("a", 1), cand("b", 1)]
    assert choose_evictions(cands, fits_when_freed(10, cands)) is None
    assert choose_evictions([], lambda names: False) is None


def test_nothing_to_evict_when_it_already_fits():
    assert choose_evictions([cand("a", 1)], lambda names: True) == []


def test_without_statistics_it_is_least_recently_used_per_byte():
    """An old caller passes only name, bytes, priority and last use."""
    cands = [cand("old", 4, last_used=100.0), cand("new", 4, last_used=900.0)]
    assert choose_evictions(cands, fits_when_freed(4, cands)) == ["old"]


def test_an_unmeasured_load_time_counts_as_the_mean_of_the_measured_ones():
    r = rate(0.0)
    cands = [cand("slow", 4, load_s=30.0, requests=r), cand("fast", 4, load_s=2.0, requests=r), cand("unknown", 4, requests=r)]
    costs = {x.candidate.name: x.cost for x in rank(cands, 10.0)}
    assert costs["unknown"] == pytest.approx((costs["slow"] + costs["fast"]) / 2)
    assert [x.candidate.name for x in rank(cands, 10.0)] == ["fast", "unknown", "slow"]


def test_the_last_question_asked_is_the_returned_set():
    cands = [cand("a", 5, requests=rate(0.0)), cand("b", 4, requests=rate(10.0)), cand("c", 3, requests=rate(20.0))]
    asked = []
    need = fits_when_freed(7, cands)

    def fits(names):
        asked.append(names)
        return need(names)

    chosen = choose_evictions(cands, fits, now=30.0)
    assert asked[0] == frozenset() and asked[-1] == frozenset(chosen)
    assert len(set(asked[:-1])) == len(asked[:-1])  # no set asked twice before the last


# --- Properties -----------------------------------------------------------------------------------


@st.composite
def scenarios(draw):
    """Candidates spread over 1-3 GPUs, some protected; the new model needs memory on each GPU."""
    n_gpus = draw(st.integers(1, 3))
    n = draw(st.integers(0, 8))
    cands, per_gpu = [], {}
    for i in range(n):
        freed = [draw(st.integers(0, 8)) for _ in range(n_gpus)]
        times = sorted(draw(st.lists(st.floats(0, 5000, allow_nan=False), max_size=5)))
        c = cand(
            f"m{i}",
            sum(freed),
            priority=draw(st.integers(0, 2)),
            last_used=times[-1] if times else 0.0,
            load_s=draw(st.one_of(st.none(), st.floats(0.5, 60))),
            requests=rate(*times) if times else None,
            eager=draw(st.booleans()) and draw(st.booleans()),
            busy=draw(st.booleans()) and draw(st.booleans()),
        )
        cands.append(c)
        per_gpu[c.name] = freed
    need = [draw(st.integers(0, 20)) for _ in range(n_gpus)]

    def fits(names):
        return all(sum(per_gpu[m][g] for m in names) >= need[g] for g in range(n_gpus))

    return cands, fits


def evictable(cands):
    return [c for c in cands if c.freed_bytes > 0 and not c.eager and not c.busy]


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_the_choice_fits_spares_the_protected_and_is_minimal(scenario):
    cands, fits = scenario
    chosen = choose_evictions(cands, fits, now=5000.0)
    allowed = evictable(cands)
    if chosen is None:
        assert not fits(frozenset(c.name for c in allowed))
        return
    assert fits(frozenset(chosen))
    assert len(set(chosen)) == len(chosen)
    assert set(chosen) <= {c.name for c in allowed}  # never eager, busy, or freeing nothing
    for name in chosen:  # minimal: every model in it is needed
        assert not fits(frozenset(chosen) - {name})


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_a_priority_is_touched_only_when_everything_below_it_is_not_enough(scenario):
    cands, fits = scenario
    chosen = choose_evictions(cands, fits, now=5000.0)
    if not chosen:
        return
    by_name = {c.name: c for c in cands}
    top = max(by_name[n].priority for n in chosen)
    assert not fits(frozenset(c.name for c in evictable(cands) if c.priority < top))


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.randoms(use_true_random=False))
def test_the_choice_does_not_depend_on_the_order_of_the_candidates(scenario, rnd: random.Random):
    cands, fits = scenario
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    assert choose_evictions(cands, fits, now=5000.0) == choose_evictions(shuffled, fits, now=5000.0)
