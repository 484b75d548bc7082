"""Which idle models to evict so that a new one fits: a pure choice, shared by the gateway and
the eviction benchmark.

Candidates are ranked by the memory they free on the GPUs the new model may use (more first),
then by priority (lower first), then by last use (older first); they are taken in that order
until the new model fits, then any choice the final set does not need is given back, so no more
is evicted than necessary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class EvictionCandidate:
    name: str
    freed_bytes: int  # what evicting it frees on the GPUs the new model may use
    priority: int
    last_used: float


def rank(candidates: Sequence[EvictionCandidate]) -> list[EvictionCandidate]:
    """The eviction order; a model that frees nothing useful is never a candidate."""
    useful = [c for c in candidates if c.freed_bytes > 0]
    return sorted(useful, key=lambda c: (-c.freed_bytes, c.priority, c.last_used, c.name))


def choose_evictions(
    candidates: Sequence[EvictionCandidate], fits: Callable[[frozenset[str]], bool]
) -> list[str] | None:
    """The names to evict so that ``fits(evicted)`` holds, or None when evicting all is not enough.

    ``fits`` answers whether the new model fits once the given models are gone (the caller
    plans it against that memory); the empty set is asked first.
    """
    if fits(frozenset()):
        return []
    chosen: list[str] = []
    for c in rank(candidates):
        chosen.append(c.name)
        if fits(frozenset(chosen)):
            break
    else:
        return None
    for name in list(reversed(chosen[:-1])):
        trial = [n for n in chosen if n != name]
        if fits(frozenset(trial)):
            chosen = trial
    # Leave the caller's last answer matching the returned set.
    fits(frozenset(chosen))
    return chosen
