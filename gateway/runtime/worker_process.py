"""One worker process as the pool sees it: a state machine over a transport connection.

A ``WorkerProcess`` is started at most once; a restart is a new ``WorkerProcess`` (so a late
message or exit of an old process can never touch its successor). Its state moves only along
``gateway.runtime.states.TRANSITIONS``, from its own methods and its reader task, and every change
is reported to its owner (the pool) through ``on_event(worker, event)``, one of
gateway.runtime.events: ``Starting``, ``Progress``, ``Ready``, ``Failed`` (``loading``: true when
the load failed, false when it died while ready), ``Crashed`` (it died while ready, or broke the
protocol and was killed; the pool decides whether to restart), ``Stopped`` (it exited after
``stop``) and ``Stats`` (the worker's engine statistics).

Requests are read as ``gateway.runtime.requests.RequestStream``s of the protocol's Structs (the
transport decoded them); a request the worker leaves unanswered when it exits ends with
``WorkerExited``.

A "ready" line read after ``stop`` began is ignored (the process is on its way out), and that
exit is a stop, never a crash.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import Callable
from typing import Any

from gateway.engine.process import exit_reason
from gateway.engine.protocol import (
    Cancel,
    Chunk,
    End,
    Error,
    Failed,
    Op,
    Progress,
    Ready,
    Request,
    Result,
    Stats,
    WorkerMessage,
    WorkerSpec,
)
from gateway.errors import ModelUnavailableError
from gateway.runtime import events
from gateway.runtime.requests import TERMINAL, Reply, WorkerExited
from gateway.runtime.states import ModelState, check_transition
from gateway.runtime.transport import ProtocolError, SubprocessTransport, WorkerConnection, WorkerGone, WorkerTransport

EventSink = Callable[["WorkerProcess", events.ModelEvent], None]


class WorkerProcess:
    """Starts, talks to and stops one worker."""

    def __init__(
        self,
        spec: WorkerSpec,
        env: dict[str, str],
        transport: WorkerTransport | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        self.spec = spec
        self._env = env
        self._transport = transport or SubprocessTransport()
        self._on_event = on_event or (lambda worker, event: None)
        self.state = ModelState.STOPPED
        self.reason: str | None = None
        self.progress = 0
        self.allocated: dict[str, Any] = {}
        self.gpu_used_bytes: dict[str, int] = {}
        self.load_seconds: float | None = None
        self.slots: int | None = None  # the engine's last "stats": its slots and how many are busy
        self.busy_slots: int | None = None
        self._conn: WorkerConnection | None = None
        self._pending: dict[int, Inbox] = {}
        self._ids = itertools.count(1)
        self._settled = asyncio.Event()  # ready, failed or stopped: wait_ready returns
        self._exited = asyncio.Event()
        self._reader: asyncio.Task | None = None  # held: the loop keeps only weak references to tasks

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self._conn.pid if self._conn is not None else None

    def log_tail(self) -> list[str]:
        """The last lines the worker wrote to stderr (llama.cpp's log; ``gateway logs``)."""
        return self._conn.stderr_tail() if self._conn is not None else []

    def _move(self, new: ModelState) -> None:
        check_transition(self.name, self.state, new)
        self.state = new

    def _emit(self, event: events.ModelEvent) -> None:
        self._on_event(self, event)

    async def start(self) -> None:
        """Spawn the worker; returns at once (``wait_ready`` waits for the load)."""
        self._move(ModelState.STARTING)
        try:
            self._conn = await self._transport.spawn(self.spec, self._env)
        except OSError as exc:
            if self.state is ModelState.STOPPING:
                self._finish_stop(None)
            else:
                self._fail(f"could not start the worker: {exc}")
            self._exited.set()
            return
        if self.state is not ModelState.STARTING:
            # stop() came while spawning: the new process goes at once.
            await self._conn.terminate(2.0)
            self._finish_stop(None)
            self._exited.set()
            return
        self._emit(events.Starting(self.name, self._conn.pid))
        self._reader = asyncio.create_task(self._read(self._conn), name=f"{self.name}-worker")

    async def wait_ready(self, timeout: float | None = None) -> ModelState:
        """Wait until the worker is ready, failed or stopped (or the timeout passes)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)
        return self.state

    def _fail(self, reason: str) -> None:
        loading = self.state is ModelState.STARTING
        self._move(ModelState.FAILED)
        self.reason = reason
        self._settled.set()
        self._emit(events.Failed(self.name, reason, loading))

    def give_up(self, reason: str) -> None:
        """Stay failed, with this reason (the pool's restart budget is spent)."""
        if self.state is not ModelState.FAILED:
            self._move(ModelState.FAILED)
        self.reason = reason

    async def _read(self, conn: WorkerConnection) -> None:
        broken = None
        try:
            async for msg in conn.messages():
                self._dispatch(msg)
        except ProtocolError as exc:
            broken = str(exc)  # the connection killed the worker: a crash like any other
        finally:
            code = await conn.wait()
            self._on_exit(code, conn, broken)

    def _dispatch(self, msg: WorkerMessage) -> None:
        if isinstance(msg, (Chunk, Result, End, Error)):
            queue = self._pending.get(msg.id)
            if queue is not None:
                queue.put_nowait(msg)
        elif isinstance(msg, Stats):
            self.slots, self.busy_slots = msg.slots, msg.busy_slots
            self._emit(events.Stats(self.name, msg))
        elif self.state is not ModelState.STARTING:
            return  # load messages after a stop began (or a duplicate): the process is leaving
        elif isinstance(msg, Progress):
            self.progress = msg.percent
            self._emit(events.Progress(self.name, self.progress))
        elif isinstance(msg, Ready):
            self._move(ModelState.READY)
            self.progress = 100
            self.allocated = msg.allocated
            self.gpu_used_bytes = msg.gpu_used_bytes
            self.load_seconds = msg.load_seconds
            self._settled.set()
            self._emit(events.Ready(self.name, self.load_seconds))
        elif isinstance(msg, Failed):
            self._fail(msg.message)

    def _on_exit(self, code: int, conn: WorkerConnection, broken: str | None = None) -> None:
        why = f"was killed: {broken}" if broken else f"exited (code {code})"
        for queue in self._pending.values():
            queue.put_nowait(WorkerExited(f"the model's worker {why}"))
        reason = f"{broken}; the worker was killed" if broken else exit_reason("worker", code, conn.stderr_tail())
        if self.state is ModelState.STOPPING:
            self._finish_stop(code)
        elif self.state is ModelState.STARTING:
            self._fail(reason)
        elif self.state is ModelState.READY:
            self._fail(reason)
            self._emit(events.Crashed(self.name, reason, code))
        self._exited.set()

    def _finish_stop(self, code: int | None) -> None:
        self._move(ModelState.STOPPED)
        self._settled.set()
        self._emit(events.Stopped(self.name, code))

    def request(self, op: Op, params: dict[str, Any], *, stream: bool) -> WorkerRequest:
        """One request's messages, up to and including the terminal one (sent on the first read).

        Closing it early (a client that went away) cancels the generation in the worker, which
        stops it at the next token; ``cancel`` does so while its messages can still be read.
        """
        return WorkerRequest(self, op, params, stream)

    def _open(self, op: Op, params: dict[str, Any], stream: bool) -> tuple[int, WorkerConnection, Inbox]:
        conn = self._conn
        if self.state is not ModelState.READY or conn is None:
            raise ModelUnavailableError(f"model {self.name!r} is {self.state.value}")
        rid = next(self._ids)
        queue = Inbox()
        self._pending[rid] = queue
        try:
            conn.send(Request(id=rid, op=op, stream=stream, params=params))
        except WorkerGone:
            # Its stdin is closed while it counts as ready: a crash the reader has not seen yet.
            # The kill makes sure it sees one (and the pool restarts the model).
            self._close(rid)
            conn.kill_now()
            raise ModelUnavailableError(f"model {self.name!r}: its worker is gone; it restarts") from None
        return rid, conn, queue

    def _close(self, rid: int) -> None:
        self._pending.pop(rid, None)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker (shutdown, SIGTERM, SIGKILL); returns once it has exited."""
        if self.state in (ModelState.STARTING, ModelState.READY):
            self._move(ModelState.STOPPING)
        elif self.state is ModelState.FAILED:
            if self._conn is not None and not self._exited.is_set():
                # A load failure: the worker is exiting by itself; make sure it is gone.
                await self._conn.terminate(timeout)
                await self._exited.wait()
            self._move(ModelState.STOPPED)
            self._settled.set()
            return
        if self.state is not ModelState.STOPPING:
            return  # stopped already
        if self._conn is None:
            await self._exited.wait()  # still spawning: start() sees STOPPING and finishes the stop
            return
        await self._conn.terminate(timeout)
        await self._exited.wait()

    def kill_now(self) -> None:
        if self._conn is not None:
            self._conn.kill_now()


class Inbox:
    """One request's replies as the reader puts them, for the one task that reads them: an
    unbounded asyncio.Queue for a single reader, without the queue's bookkeeping (its task
    counting and getters list), which cost as much as the rest of a stream chunk's routing."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[Reply] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Reply) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> Reply | None:
        """The next reply, or None when none has arrived."""
        return self._items.popleft() if self._items else None

    async def get(self) -> Reply:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class WorkerRequest:
    """One request to a worker, read as an async iterator of its replies (a
    ``gateway.runtime.requests.RequestStream``)."""

    def __init__(self, worker: WorkerProcess, op: Op, params: dict[str, Any], stream: bool) -> None:
        self._worker = worker
        self._op = op
        self._params = params
        self._stream = stream
        self._rid: int | None = None
        self._conn: WorkerConnection | None = None
        self._queue: Inbox | None = None
        self._finished = False
        self._cancelled = False

    def __aiter__(self) -> WorkerRequest:
        return self

    async def __anext__(self) -> Reply:
        if self._finished:
            raise StopAsyncIteration
        if self._queue is None:
            try:
                self._rid, self._conn, self._queue = self._worker._open(self._op, self._params, self._stream)
            except BaseException:
                self._finished = True
                raise
        return self._read(await self._queue.get())

    def ready(self) -> Reply | None:
        """The next reply if it has arrived already (read as ``__anext__`` reads it), else None."""
        if self._finished or self._queue is None:
            return None
        msg = self._queue.get_nowait()
        return None if msg is None else self._read(msg)

    def _read(self, msg: Reply) -> Reply:
        if isinstance(msg, TERMINAL):
            self._finished = True
            self._worker._close(self._rid)  # type: ignore[arg-type]
        return msg

    def cancel(self) -> None:
        """Stop the generation at its next token; its last messages (its "end", with the usage
        so far) can still be read."""
        if self._cancelled or self._finished or self._conn is None:
            return
        self._cancelled = True
        with contextlib.suppress(WorkerGone):
            self._conn.send(Cancel(id=self._rid))  # type: ignore[arg-type]

    async def aclose(self) -> None:
        if self._queue is not None and not self._finished:
            self.cancel()
            self._worker._close(self._rid)  # type: ignore[arg-type]
        self._finished = True
