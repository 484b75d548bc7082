"""Per-model flow control: ``max_concurrency`` requests run, up to ``queue_size`` wait.

Beyond that a request is refused at once (429 with Retry-After); a request that waits longer
than its timeout gets 503. A finished request hands its slot straight to the oldest waiter, so
the queue is first-come first-served and no newcomer can overtake it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from gateway.errors import QueueFullError, QueueTimeoutError


class Admission:
    """A bounded waiting room in front of one model's engines (one event loop only)."""

    def __init__(self, name: str, max_concurrency: int, queue_size: int) -> None:
        self.name = name
        self.max_concurrency = max_concurrency
        self.queue_size = queue_size
        self._free = max_concurrency
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.running = 0

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    @contextlib.asynccontextmanager
    async def slot(self, timeout: float) -> AsyncIterator[None]:
        """Hold one of the model's run slots for the body of the ``async with``."""
        await self._acquire(timeout)
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._release()

    async def _acquire(self, timeout: float) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        if self.waiting >= self.queue_size:
            raise QueueFullError(self.name, self.queue_size)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            async with asyncio.timeout(timeout):
                await turn
        except TimeoutError:
            raise QueueTimeoutError(self.name, timeout) from None
        except asyncio.CancelledError:
            # Cancelled just after being handed the slot: pass it on rather than lose it.
            if turn.done() and not turn.cancelled():
                self._release()
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(turn)

    def _release(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot goes to this waiter, still taken
                return
        self._free += 1
