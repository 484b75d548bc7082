"""Which idle models to evict so that a new one fits: a pure choice, shared by the gateway and
the eviction benchmark (bench/ondemand.py).

Evicting a model is paid for later, by the requests that find it gone: they wait for it to load
again. So each candidate gets an *expected cost*: its last measured load time multiplied by its
current request rate (``RequestRate``: recency and frequency in two decayed counters). That is
the waiting, in seconds per second, that its eviction would put on users. What one eviction buys
is memory, so candidates are ranked by expected cost *per byte freed* on the GPUs the new model
may use (cheapest first), taken in that order until the new model fits (``fits`` decides,
usually by asking the planner), and then every one the set does not need is given back, dearest
first. Ranking by cost alone, without the bytes, evicts several small cheap models where one
bigger one makes room, and every eviction is a later load (docs/benchmarks.md).

Priority comes before cost: a model of priority p is evicted only when the models of lower
priority cannot make room without it (all of them together are tried first), and the lower
priorities then only top up what priority p leaves missing. Eager and busy models are never
evicted, nor is one that frees nothing on the new model's GPUs. Ties go to the least recently
used, then to names, so the choice never depends on the order of the candidates. The set returned
is minimal: giving back any one of its models breaks the fit (``fits`` being monotone).

Everything is pure: the time is passed in, never read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Two memories of a model's requests. The recent one (mean life ~22 s) holds a conversation
# that is going on: its next turn comes tens of seconds after the last (bench/ondemand.py's
# interactive think time is 25 s). The popular one (mean life ~87 min) holds how often the model
# is asked for at all, across sessions. Chosen on bench/ondemand.py over 10 seeds x 2 boxes
# (docs/benchmarks.md); neither is sharp (10-20 s with 30 min-2 h were ahead of every baseline
# on 9-13 of the 20 traces, these on 13).
RECENT_HALF_LIFE_S = 15.0
POPULAR_HALF_LIFE_S = 3600.0


def _decay(count: float, elapsed_s: float, half_life_s: float) -> float:
    return count * 2.0 ** (-max(0.0, elapsed_s) / half_life_s)


@dataclass(frozen=True)
class RequestRate:
    """A model's request rate from its request times: O(1) to keep, one per model.

    Two exponentially decayed request counts as of time ``at``: each request adds 1 to both,
    which then halve every ``RECENT_HALF_LIFE_S`` and ``POPULAR_HALF_LIFE_S``. Immutable:
    ``observe`` returns the next value. A ``now`` before ``at`` counts as ``at`` (no growth).
    """

    recent: float = 0.0
    popular: float = 0.0
    at: float = 0.0

    def observe(self, now: float) -> RequestRate:
        """The rate after one more request at ``now``."""
        elapsed = now - self.at
        return RequestRate(
            _decay(self.recent, elapsed, RECENT_HALF_LIFE_S) + 1.0,
            _decay(self.popular, elapsed, POPULAR_HALF_LIFE_S) + 1.0,
            max(now, self.at),
        )

    def per_second(self, now: float) -> float:
        """Expected requests per second: the mean of the two counters' estimates, each its count
        over the mean life of a count in it (half-life / ln 2), which a steady rate r makes r."""
        elapsed = now - self.at
        return math.log(2.0) / 2.0 * (
            _decay(self.recent, elapsed, RECENT_HALF_LIFE_S) / RECENT_HALF_LIFE_S
            + _decay(self.popular, elapsed, POPULAR_HALF_LIFE_S) / POPULAR_HALF_LIFE_S
        )


@dataclass(frozen=True)
class EvictionCandidate:
    name: str
    freed_bytes: int  # what evicting it frees on the GPUs the new model may use
    priority: int
    last_used: float
    # The model's last measured load time (start to ready), seconds. None: not measured, counted
    # as the mean of the measured candidates (1 s if none is).
    load_seconds: float | None = None
    # Its requests so far (kept across its unloads). None: as if its one request came at
    # ``last_used``, so a caller that records nothing gets least recently used, per byte.
    requests: RequestRate | None = None
    eager: bool = False  # never evicted
    busy: bool = False  # requests running or waiting: never evicted

    @property
    def evictable(self) -> bool:
        return self.freed_bytes > 0 and not self.eager and not self.busy


@dataclass(frozen=True)
class RankedCandidate:
    candidate: EvictionCandidate
    cost: float  # expected waiting its eviction causes, seconds per second

    @property
    def cost_per_byte(self) -> float:
        return self.cost / self.candidate.freed_bytes


def expected_cost(candidate: EvictionCandidate, now: float, load_seconds: float) -> float:
    """Seconds of waiting per second that evicting it now would cause: load time x request rate."""
    requests = candidate.requests if candidate.requests is not None else RequestRate().observe(candidate.last_used)
    return load_seconds * requests.per_second(now)


def _latest(candidates: Sequence[EvictionCandidate]) -> float:
    times = [c.last_used for c in candidates] + [c.requests.at for c in candidates if c.requests is not None]
    return max(times, default=0.0)


def rank(candidates: Sequence[EvictionCandidate], now: float | None = None) -> list[RankedCandidate]:
    """The evictable candidates in eviction order: lowest priority first, then cheapest per byte
    freed, then least recently used, then by name. ``now`` None: the latest time among the
    candidates (their last use or last request)."""
    evictable = [c for c in candidates if c.evictable]
    if now is None:
        now = _latest(evictable)
    measured = [c.load_seconds for c in evictable if c.load_seconds is not None]
    unmeasured = sum(measured) / len(measured) if measured else 1.0
    ranked = [
        RankedCandidate(c, expected_cost(c, now, c.load_seconds if c.load_seconds is not None else unmeasured))
        for c in evictable
    ]
    return sorted(ranked, key=lambda r: (r.candidate.priority, r.cost_per_byte, r.candidate.last_used, r.candidate.name))


def choose_evictions(
    candidates: Sequence[EvictionCandidate],
    fits: Callable[[frozenset[str]], bool],
    *,
    now: float | None = None,
) -> list[str] | None:
    """The names to evict so that ``fits(evicted)`` holds, or None when evicting all is not enough.

    ``fits`` answers whether the new model fits once the given models are gone (the caller
    plans it against that memory); it is assumed monotone (evicting more never hurts). It is
    asked about the empty set first, about no set twice, except that the returned set is always
    the last one asked (again, if need be). ``now`` is the time the
    request rates are read at (the caller's clock; None: the latest time among the candidates).
    The names come in eviction order (``rank``).
    """
    answers: dict[frozenset[str], bool] = {}
    asked: list[frozenset[str]] = []

    def ask(names: frozenset[str]) -> bool:  # the planner is never asked twice about one set
        if names not in answers:
            answers[names] = fits(names)
            asked.append(names)
        return answers[names]

    if ask(frozenset()):
        return []
    ranked = rank(candidates, now)
    levels = sorted({r.candidate.priority for r in ranked})
    # The lowest priority that, with every one below it, makes room: nothing above it goes.
    top = next((lv for lv in levels if ask(frozenset(r.candidate.name for r in ranked if r.candidate.priority <= lv))), None)
    if top is None:
        return None
    chosen: list[RankedCandidate] = []
    for level in reversed([lv for lv in levels if lv <= top]):
        below = frozenset(r.candidate.name for r in ranked if r.candidate.priority < level)
        kept = frozenset(r.candidate.name for r in chosen)
        picked: list[RankedCandidate] = []
        if not ask(kept | below):  # else the higher priorities already chosen make room with those below
            for r in (r for r in ranked if r.candidate.priority == level):
                picked.append(r)
                if ask(kept | below | _names(picked)):
                    break
            picked = _give_back(picked, lambda trial: ask(kept | below | _names(trial)))
        chosen += picked
    result = _names(chosen)
    if asked[-1] != result:
        fits(result)  # leave the caller's last answer matching the returned set
    order = {r.candidate.name: i for i, r in enumerate(ranked)}
    return sorted(result, key=order.__getitem__)


def _names(ranked: Sequence[RankedCandidate]) -> frozenset[str]:
    return frozenset(r.candidate.name for r in ranked)


def _give_back(chosen: list[RankedCandidate], fits: Callable[[list[RankedCandidate]], bool]) -> list[RankedCandidate]:
    """Drop, dearest first, every one the set still fits without (the last one added is needed)."""
    for r in sorted(chosen[:-1], key=lambda r: (-r.cost, -r.candidate.last_used, r.candidate.name)):
        trial = [x for x in chosen if x is not r]
        if fits(trial):
            chosen = trial
    return chosen
