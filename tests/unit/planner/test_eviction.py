"""The eviction choice (planner.eviction)."""

from planner.eviction import EvictionCandidate, choose_evictions

GIB = 1024**3


def cand(name, gib, priority=0, last_used=0.0):
    return EvictionCandidate(name, int(gib * GIB), priority, last_used)


def fits_when_freed(need_gib):
    sizes = {}

    def fits(names):
        return sum(sizes[n] for n in names) >= need_gib * GIB

    return sizes, fits


def test_evicts_the_model_that_frees_most_first():
    cands = [cand("small", 2), cand("big", 8), cand("mid", 4)]
    sizes, fits = fits_when_freed(6)
    sizes.update({c.name: c.freed_bytes for c in cands})
    assert choose_evictions(cands, fits) == ["big"]


def test_ties_go_to_lower_priority_then_least_recently_used():
    cands = [cand("a", 4, priority=1, last_used=1), cand("b", 4, priority=0, last_used=5), cand("c", 4, priority=0, last_used=2)]
    sizes, fits = fits_when_freed(4)
    sizes.update({c.name: c.freed_bytes for c in cands})
    assert choose_evictions(cands, fits) == ["c"]


def test_takes_just_enough_when_several_are_needed():
    cands = [cand("a", 5), cand("b", 4), cand("c", 3)]
    sizes, fits = fits_when_freed(8)
    sizes.update({c.name: c.freed_bytes for c in cands})
    # a (5) then b (9 >= 8): a+b; giving back either breaks the fit.
    assert choose_evictions(cands, fits) == ["a", "b"]
    sizes2, fits2 = fits_when_freed(7)
    sizes2.update({c.name: c.freed_bytes for c in cands})
    # a, b -> 9 fits; then dropping a leaves 4 < 7; both needed.
    assert choose_evictions(cands, fits2) == ["a", "b"]


def test_gives_back_an_early_choice_the_final_set_does_not_need():
    # "wide" frees the most in total but the fit is decided by a specific model's GPU.
    cands = [cand("wide", 8), cand("key", 2)]
    fits = lambda names: "key" in names  # noqa: E731
    assert choose_evictions(cands, fits) == ["key"]


def test_none_when_evicting_everything_is_not_enough():
    cands = [cand("a", 1), cand("b", 1)]
    sizes, fits = fits_when_freed(10)
    sizes.update({c.name: c.freed_bytes for c in cands})
    assert choose_evictions(cands, fits) is None


def test_nothing_to_evict_when_it_already_fits():
    assert choose_evictions([cand("a", 1)], lambda names: True) == []
