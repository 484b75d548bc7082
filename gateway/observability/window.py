"""A count over the last minute, in one-second steps: per-key limits and the page's activity."""

from __future__ import annotations

import collections
import math

WINDOW_S = 60


class Window:
    """A count over the last ``WINDOW_S`` seconds, in one-second steps (amortised O(1)).

    Counting runs once per streamed token, so within one second (where nothing can leave the
    window) an ``add`` is one addition.
    """

    __slots__ = ("_steps", "_total", "_second")

    def __init__(self) -> None:
        self._steps: collections.deque[list[int]] = collections.deque()  # [second, count], oldest first
        self._total = 0
        self._second: int | None = None  # the second the window was last moved to

    def _expire(self, now: float) -> int:
        second = math.floor(now)
        if second != self._second:
            self._second = second
            oldest_kept = second - WINDOW_S + 1
            steps = self._steps
            while steps and steps[0][0] < oldest_kept:
                self._total -= steps.popleft()[1]
        return second

    def add(self, now: float, n: int = 1) -> None:
        second = self._expire(now)
        steps = self._steps
        if steps and steps[-1][0] == second:
            steps[-1][1] += n
        else:
            steps.append([second, n])
        self._total += n

    def total(self, now: float) -> int:
        self._expire(now)
        return self._total

    def seconds_until_below(self, now: float, limit: int) -> float:
        """Seconds until the count is below ``limit`` again (0 when it is already)."""
        self._expire(now)
        left = self._total
        if left < limit:
            return 0.0
        for second, count in self._steps:
            left -= count
            if left < limit:
                return max(0.0, second + WINDOW_S - now)
        return 0.0

    def seconds_until_empty(self, now: float) -> float:
        """Seconds until everything counted now has left the window."""
        self._expire(now)
        return max(0.0, self._steps[-1][0] + WINDOW_S - now) if self._steps else 0.0
