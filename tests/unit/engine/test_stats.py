"""The decode loop's Stats messages (gateway.engine.stats)."""

from __future__ import annotations

from gateway.engine.protocol import Stats
from gateway.engine.stats import STATS_INTERVAL_S, StepStats


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_activity_is_reported_once_a_second_after_it_began_and_then_nothing_is_pending():
    clock, sent = Clock(), []
    stats = StepStats(4, sent.append, clock)
    stats.decoded(3)
    assert stats.pending(busy=1)
    stats.maybe_send(busy=1)
    assert sent == []  # not due yet
    clock.now += STATS_INTERVAL_S
    stats.maybe_send(busy=1)
    assert sent == [Stats(busy_slots=1, slots=4, batch_sizes={3: 1}, cached_prompt_tokens=0)]
    assert not stats.pending(busy=1)


def test_without_a_sender_nothing_is_ever_pending_so_the_idle_loop_sleeps():
    # Pending activity nobody sends stayed due forever: the decode loop's idle wait got a
    # timeout of 0 and spun, holding the GIL from every other thread of its process.
    clock = Clock()
    stats = StepStats(4, None, clock)
    stats.decoded(3)
    stats.cached(5)
    clock.now += 10 * STATS_INTERVAL_S
    stats.maybe_send(busy=2)
    assert not stats.pending(busy=2)
