"""Per-model flow control: ``max_concurrency`` requests run, up to ``queue_size`` wait.

Beyond that a request is refused at once (429 with Retry-After); a request that waits longer
than its timeout gets 503. Both are counted by reason for the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from gateway.errors import QueueFullError, QueueTimeoutError


class Admission:
    """A bounded waiting room in front of one model's engines."""

    def __init__(self, name: str, max_concurrency: int, queue_size: int) -> None:
        self.name = name
        self.max_concurrency = max_concurrency
        self.queue_size = queue_size
        self._slots = asyncio.Semaphore(max_concurrency)
        self.waiting = 0
        self.running = 0
        self.rejected = {"queue_full": 0, "queue_timeout": 0}

    @contextlib.asynccontextmanager
    async def slot(self, timeout: float) -> AsyncIterator[None]:
        """Hold one of the model's run slots for the body of the ``async with``."""
        if self._slots.locked() and self.waiting >= self.queue_size:
            self.rejected["queue_full"] += 1
            raise QueueFullError(self.name, self.queue_size)
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError:
            self.rejected["queue_timeout"] += 1
            raise QueueTimeoutError(self.name, timeout) from None
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
