"""What each model did over the last minute: requests answered and tokens generated.

The web page's models table shows "requests and tokens/s over the last minute"; Prometheus
counters answer that only through a query engine. ``RecentActivity`` keeps one bucket per second
per model (``Window``, shared with the per-key limits), so its memory is bounded whatever the
request rate.
It is fed once per answered request (``RequestRecord.finish``) and read by the page's state
endpoint, both on the event loop. The clock is injected so tests move time by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.observability.window import WINDOW_S, Window


@dataclass(frozen=True)
class Activity:
    """One model's last ``window_s`` seconds."""

    requests: int
    completion_tokens: int
    window_s: int

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.window_s


class RecentActivity:
    """Per-model requests and completion tokens over the last minute (observability.window)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._models: dict[str, tuple[Window, Window]] = {}  # model -> (requests, tokens)

    @property
    def window_s(self) -> int:
        return WINDOW_S

    def record(self, model: str, completion_tokens: int | None = None) -> None:
        """Count one answered request of ``model`` (and the tokens it generated)."""
        now = self._clock()
        requests, tokens = self._models.setdefault(model, (Window(), Window()))
        requests.add(now)
        tokens.add(now, max(0, int(completion_tokens or 0)))

    def of(self, model: str) -> Activity:
        """The model's requests and tokens over the window ending now (zeros if none)."""
        windows = self._models.get(model)
        if windows is None:
            return Activity(0, 0, WINDOW_S)
        now = self._clock()
        return Activity(windows[0].total(now), windows[1].total(now), WINDOW_S)
