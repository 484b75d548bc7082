"""What a request to a model's worker reads, as the HTTP layer sees it (it imports this module,
not the worker process's).

A request is sent as ``Lease.request(op, params, stream=...)`` and read as a ``RequestStream``: an
async iterator of ``Reply``, the worker's messages for it (gateway.engine.protocol), decoded at
the transport; its last one is a ``Terminal``. ``WorkerExited`` is never on the wire: the pool's
side ends a request with it when the worker exits (or is killed) before answering.
"""

from __future__ import annotations

from typing import Protocol, Union

import msgspec

from gateway.engine.protocol import Chunk, End, Error, Result


class WorkerExited(msgspec.Struct, frozen=True):
    """The worker exited before the request's end; ``message`` says how."""

    message: str


Terminal = Union[Result, End, Error, WorkerExited]
Reply = Union[Chunk, Terminal]
TERMINAL = (Result, End, Error, WorkerExited)


class RequestStream(Protocol):
    """One request's replies, up to and including its terminal one (sent on the first read)."""

    def __aiter__(self) -> RequestStream: ...

    async def __anext__(self) -> Reply: ...

    def ready(self) -> Reply | None:
        """The next reply if it has arrived already (read as ``__anext__`` reads it), else None:
        a stream writes what has piled up in one write."""

    def cancel(self) -> None:
        """Stop the generation at its next token; its last replies (its End, with the usage so
        far) can still be read."""

    async def aclose(self) -> None:
        """Stop reading; a generation still running is cancelled."""
