"""Per-key limits: requests and tokens over a sliding minute, and requests running at once.

Each key's use is counted in one-second steps over the last 60 s (``Window``): a request is
admitted while the key's requests in the window are under ``requests_per_minute``, its tokens
under ``tokens_per_minute`` and its running requests under ``max_concurrency``; otherwise it
gets ``RateLimitError`` (429) with ``Retry-After`` (when enough of the window has passed) and
OpenAI's ``x-ratelimit-*`` headers. The same windows are what ``gateway status`` shows.

Tokens are prompt + completion. A whole response is charged when it ends; a stream is charged
token by token as it is generated (``Ticket.charge``), so the proxy can stop it when the key's
budget runs out, and its prompt tokens when the worker reports them at the end. Nothing sleeps:
the clock is injected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from gateway.access.keyring import ApiKey
from gateway.observability.window import WINDOW_S, Window
from gateway.errors import RateLimitError

# A key over max_concurrency may retry as soon as one of its requests ends; we cannot know when.
CONCURRENCY_RETRY_S = 1

Clock = Callable[[], float]


class KeyUsage:
    """One key's use: requests, tokens and refusals over the last minute; requests running now."""

    def __init__(self) -> None:
        self.requests = Window()
        self.tokens = Window()
        self.rejected: dict[str, Window] = {}
        self.in_flight = 0

    def reject(self, now: float, reason: str) -> None:
        self.rejected.setdefault(reason, Window()).add(now)

    def last_minute(self, now: float) -> dict[str, Any]:
        rejected = {r: n for r, w in sorted(self.rejected.items()) if (n := w.total(now))}
        return {"requests": self.requests.total(now), "tokens": self.tokens.total(now), "rejected": rejected}


def duration(seconds: float) -> str:
    """A wait as OpenAI writes it in ``x-ratelimit-reset-*``: ``250ms``, ``12s``, ``1m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    return f"{whole}s" if whole < 60 else f"{whole // 60}m{whole % 60}s"


# Every header rate_headers may write (a browser page may read them: gateway.http.cors).
RATE_HEADERS = tuple(f"x-ratelimit-{part}-{kind}" for kind in ("requests", "tokens") for part in ("limit", "remaining", "reset"))


def rate_headers(key: ApiKey, usage: KeyUsage, now: float) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the limits the key has (none for an unlimited key)."""
    headers: dict[str, str] = {}
    for kind, limit, window in (
        ("requests", key.requests_per_minute, usage.requests),
        ("tokens", key.tokens_per_minute, usage.tokens),
    ):
        if limit is None:
            continue
        headers[f"x-ratelimit-limit-{kind}"] = str(limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - window.total(now)))
        headers[f"x-ratelimit-reset-{kind}"] = duration(window.seconds_until_empty(now))
    return headers


class Ticket:
    """One admitted request's hold on its key: a place in ``max_concurrency`` and its tokens.

    ``release`` (idempotent) gives the place back when the response's last byte is sent. A
    request on a gateway without keys gets a ticket without a key, which counts nothing.
    """

    def __init__(self, key: ApiKey | None, usage: KeyUsage | None, clock: Clock) -> None:
        self.key = key
        self._usage = usage
        self._clock = clock
        self.charged = 0
        self._held = usage is not None

    def headers(self) -> dict[str, str]:
        if self.key is None or self._usage is None:
            return {}
        return rate_headers(self.key, self._usage, self._clock())

    def charge(self, tokens: int) -> None:
        """Count tokens as they are generated (or read)."""
        if self._usage is not None and tokens > 0:
            self._usage.tokens.add(self._clock(), tokens)
            self.charged += tokens

    def take(self, tokens: int) -> bool:
        """Charge a stream's next tokens, unless the key's token budget is used up (then False,
        and nothing is charged): the stream must stop before sending them."""
        usage, key = self._usage, self.key
        if usage is None or key is None or tokens <= 0:
            return True
        now = self._clock()
        if key.tokens_per_minute is not None and usage.tokens.total(now) >= key.tokens_per_minute:
            return False
        usage.tokens.add(now, tokens)
        self.charged += tokens
        return True

    def settle(self, usage: Mapping[str, Any] | None) -> None:
        """Count what the worker reported at the end beyond what was charged on the way."""
        if not usage:
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        parts = [v for v in (prompt, completion) if isinstance(v, int)]
        total = sum(parts) if parts else usage.get("total_tokens")
        if isinstance(total, int):
            self.charge(total - self.charged)

    def budget_note(self) -> str:
        """Why a stream was stopped short, for the client to read."""
        key, usage = self.key, self._usage
        if key is None or usage is None or key.tokens_per_minute is None:
            return "stopped by the gateway: the key's token budget is used up"
        limit = key.tokens_per_minute
        wait = math.ceil(usage.tokens.seconds_until_below(self._clock(), limit))
        return (
            f"stopped by the gateway: key {key.name!r} reached its tokens_per_minute ({limit}); "
            f"the rest of this answer was not generated (budget back in {wait} s)"
        )

    def release(self) -> None:
        if self._held and self._usage is not None:
            self._held = False
            self._usage.in_flight -= 1


def admit(key: ApiKey, usage: KeyUsage, now: float, clock: Clock) -> Ticket:
    """Admit one request of ``key`` or raise ``RateLimitError`` (code ``rate`` or ``concurrency``)."""
    rpm, tpm, most = key.requests_per_minute, key.tokens_per_minute, key.max_concurrency
    refusal: tuple[str, str, float] | None = None
    if rpm is not None and usage.requests.total(now) >= rpm:
        wait = usage.requests.seconds_until_below(now, rpm)
        refusal = ("rate", f"key {key.name!r} reached its requests_per_minute ({rpm})", wait)
    elif tpm is not None and usage.tokens.total(now) >= tpm:
        wait = usage.tokens.seconds_until_below(now, tpm)
        refusal = ("rate", f"key {key.name!r} reached its tokens_per_minute ({tpm})", wait)
    elif most is not None and usage.in_flight >= most:
        refusal = ("concurrency", f"key {key.name!r} has {usage.in_flight} request(s) running, its max_concurrency", CONCURRENCY_RETRY_S)
    if refusal is not None:
        code, why, wait = refusal
        retry = max(1, math.ceil(wait))
        raise RateLimitError(
            f"{why}; retry in {retry} s", code=code, retry_after_s=retry, headers=rate_headers(key, usage, now)
        )
    usage.requests.add(now)
    usage.in_flight += 1
    return Ticket(key, usage, clock)
