"""What each model did over the last minute: requests answered, how many failed, tokens generated,
and the last failure.

The web page's models table shows "requests, errors and tokens/s over the last minute" and the
last error a request of the model got; Prometheus counters answer that only through a query
engine. ``RecentActivity`` keeps one bucket per second per model (``Window``, shared with the
per-key limits), so its memory is bounded whatever the request rate.
It is fed once per answered request (``RequestRecord.finish``) and read by the page's state
endpoint, both on the event loop. The clock is injected so tests move time by hand.

A request failed when the gateway answered it 5xx (the engine's error, a worker that died, a
model that could not be loaded): a 4xx is the client's request, not the model's health.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.observability.window import WINDOW_S, Window

# Longer error texts are cut to this many characters (a whole traceback is the log's job).
ERROR_TEXT_MAX = 500


def failed(status: int) -> bool:
    """Whether an answer with this status counts as the model's failure (a 5xx)."""
    return status >= 500


@dataclass(frozen=True)
class LastError:
    """The last failed request of a model: its status, its error's text and when (the clock's)."""

    status: int
    message: str
    at: float


@dataclass(frozen=True)
class Activity:
    """One model's last ``window_s`` seconds, and its last failure (of any age)."""

    requests: int
    errors: int
    completion_tokens: int
    window_s: int
    last_error: LastError | None = None
    now: float = 0.0  # the clock's time this was read at (for the last error's age)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.window_s

    @property
    def error_rate(self) -> float:
        """The share of the window's requests that failed (0 with no request)."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def last_error_age_s(self) -> float | None:
        return None if self.last_error is None else max(0.0, self.now - self.last_error.at)


@dataclass
class _Model:
    requests: Window
    errors: Window
    tokens: Window
    last_error: LastError | None = None


class RecentActivity:
    """Per-model requests, failures and completion tokens over the last minute (observability.window)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._models: dict[str, _Model] = {}

    @property
    def window_s(self) -> int:
        return WINDOW_S

    def record(self, model: str, completion_tokens: int | None = None, *, status: int = 200, error: str | None = None) -> None:
        """Count one answered request of ``model`` (and the tokens it generated); a failed one
        (``failed(status)``) also counts as an error and becomes the model's last error, with
        ``error``, the text its client got."""
        now = self._clock()
        windows = self._models.get(model)
        if windows is None:
            windows = self._models[model] = _Model(Window(), Window(), Window())
        windows.requests.add(now)
        windows.tokens.add(now, max(0, int(completion_tokens or 0)))
        if failed(status):
            windows.errors.add(now)
            text = (error or f"HTTP {status}")[:ERROR_TEXT_MAX]
            windows.last_error = LastError(status, text, now)

    def of(self, model: str) -> Activity:
        """The model's requests, errors and tokens over the window ending now (zeros if none)."""
        windows = self._models.get(model)
        now = self._clock()
        if windows is None:
            return Activity(0, 0, 0, WINDOW_S, None, now)
        return Activity(
            windows.requests.total(now),
            windows.errors.total(now),
            windows.tokens.total(now),
            WINDOW_S,
            windows.last_error,
            now,
        )
