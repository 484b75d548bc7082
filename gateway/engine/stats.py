"""The decode loop's activity as the protocol's ``Stats`` message (gateway.engine.protocol).

At most one message a second, and only when something happened: the second starts with the
first activity after the last message, so a burst of work is reported a second after it began
and a quiet worker sends nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from gateway.engine.protocol import Stats

STATS_INTERVAL_S = 1.0


class StepStats:
    def __init__(self, slots: int, send: Callable[[Stats], None] | None, clock: Callable[[], float]) -> None:
        self._slots = slots
        self._send = send
        self._clock = clock
        self._sizes: Counter[int] = Counter()
        self._cached = 0
        self._busy_sent = 0
        self._window: float | None = None  # when the first activity since the last message happened

    def decoded(self, n_tokens: int) -> None:
        self._sizes[n_tokens] += 1

    def cached(self, n_tokens: int) -> None:
        self._cached += n_tokens

    def pending(self, busy: int) -> bool:
        """Whether a message is due at ``due()``. Never without a sender: the decode loop's idle
        wait sleeps until then, and a report that nobody sends would stay due, so the loop
        would wake at once forever (a spinning thread holding the GIL)."""
        if self._send is None:
            return False
        pending = bool(self._sizes) or self._cached > 0 or busy != self._busy_sent
        if pending and self._window is None:
            self._window = self._clock()
        return pending

    def due(self) -> float:
        """When the pending activity is reported."""
        return (self._window if self._window is not None else self._clock()) + STATS_INTERVAL_S

    def maybe_send(self, busy: int) -> None:
        if not self.pending(busy) or self._clock() < self.due():
            return
        message = Stats(
            busy_slots=busy,
            slots=self._slots,
            batch_sizes=dict(sorted(self._sizes.items())),
            cached_prompt_tokens=self._cached,
        )
        self._sizes.clear()
        self._cached = 0
        self._busy_sent = busy
        self._window = None
        self._send(message)
