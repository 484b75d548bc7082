"""An in-memory worker behind the transport seam, for tests (as httpx ships MockTransport).

``FakeTransport`` spawns ``FakeConnection``s that speak the worker protocol without a process or
a model: they load for ``load_s``, answer requests with ``tokens`` words ``token_s`` apart, take
``stop_s`` to exit after "shutdown" and can be crashed at any moment (``crash``), break the
protocol (``break_protocol``: killed, as the real connection kills such a worker) or lose its
stdin while it runs (``close_stdin``). A test holds a load, a request or a stop at a point it
controls with ``hold_load`` / ``hold_answer`` / ``hold_stop`` (a ``threading.Event``: the
TestClient runs the app in another thread), as ``worker_held`` does for real workers, and reads
what a worker wrote in ``said``: no guessed durations. Races that take
seconds with real workers (a crash during a reload, a ready line after a stop) take milliseconds.
It runs the real pool and the real ``WorkerProcess``; only the process is missing. It takes and
sends the protocol's Structs (gateway.engine.protocol), as the real connection yields them.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.engine.protocol import (
    Cancel,
    Chunk,
    Command,
    End,
    Error,
    ErrorKind,
    Failed,
    LoadFailure,
    Progress,
    Ready,
    Request,
    Result,
    Shutdown,
    Timings,
    WorkerMessage,
    WorkerSpec,
)
from gateway.engine.dry_run import DryRun
from gateway.runtime.transport import ProtocolError, WorkerGone

_BROKEN = object()  # in the output queue: the worker broke the protocol here


@dataclass
class FakeScript:
    """How one fake worker behaves."""

    load_s: float = 0.0
    fail_load: str | None = None  # the "failed" message's text; the worker then exits 1
    stop_s: float = 0.0  # between "shutdown" and the exit (a slow stop)
    ready_during_stop: bool = False  # the load finishes (and says "ready") while stopping
    tokens: int = 3
    token_s: float = 0.0
    kill_after_s: float = 5.0  # terminate's SIGKILL comes this long after "shutdown" at the latest
    hold_load: threading.Event | None = None  # "ready" (or "failed") waits until it is set
    hold_answer: threading.Event | None = None  # each request's last token and end wait until it is set
    hold_stop: threading.Event | None = None  # after "shutdown" (and stop_s), the exit waits until it is set
    # What the load gate's dry run reports (gateway.placement.gate); None: an ok run that printed
    # no buffer line, so nothing is measured beyond the plan.
    dry_run: DryRun | None = None
    fail_answer: str | None = None  # each request ends with the engine's "error" of this text
    # What "ready" reports: llama.cpp's buffers (planner.llama_log.AllocatedBuffers.as_dict(),
    # MiB per buffer name) and NVML's bytes of the process by GPU index; empty: nothing measured.
    allocated: dict[str, Any] = field(default_factory=dict)
    gpu_used_bytes: dict[str, int] = field(default_factory=dict)


async def _until_set(event: threading.Event | None) -> None:
    while event is not None and not event.is_set():
        await asyncio.sleep(0.005)


class FakeConnection:
    _pids = itertools.count(100_000)

    def __init__(self, spec: WorkerSpec, env: dict[str, str], script: FakeScript) -> None:
        self.spec = spec
        self.env = env
        self.script = script
        self._pid = next(self._pids)
        self._out: asyncio.Queue[WorkerMessage | object | None] = asyncio.Queue()
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._cancelled: set[int] = set()
        self._tasks: set[asyncio.Task] = set()
        self.received: list[Command] = []
        self.said: list[WorkerMessage] = []  # what it wrote, in order (its reader reads it in this order)
        self.shutdown_at: float | None = None
        self._stdin_closed = False
        self._broken = ""
        self._spawn(self._load())

    # ------------------------------------------------------------ what tests use

    @property
    def alive(self) -> bool:
        return not self._exit.done()

    def crash(self, code: int = -9) -> None:
        """Die now, as kill -9 would."""
        self._die(code)

    def break_protocol(self, what: str = "a line over the limit") -> None:
        """Write something that is not a message (after what is already queued)."""
        self._broken = what
        self._out.put_nowait(_BROKEN)

    def close_stdin(self) -> None:
        """Stop taking messages while still running (a worker whose stdin reader died)."""
        self._stdin_closed = True

    # ------------------------------------------------------------ the connection

    @property
    def pid(self) -> int | None:
        return self._pid

    def send(self, message: Command) -> None:
        if self._exit.done() or self.shutdown_at is not None or self._stdin_closed:
            raise WorkerGone(self.spec.name)
        self.received.append(message)
        if isinstance(message, Request):
            self._spawn(self._answer(message))
        elif isinstance(message, Cancel):
            self._cancelled.add(message.id)
        elif isinstance(message, Shutdown):
            self._begin_shutdown()

    async def messages(self) -> AsyncIterator[WorkerMessage]:
        while (msg := await self._out.get()) is not None:
            if msg is _BROKEN:
                self._die(-9)  # as SubprocessConnection does: killed, then the error
                raise ProtocolError(f"the fake worker wrote {self._broken}")
            yield msg  # type: ignore[misc]

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    def stderr_tail(self) -> list[str]:
        return [f"fake worker {self.spec.name} exited"] if self._exit.done() else []

    async def terminate(self, timeout: float) -> None:
        if self._exit.done():
            return
        if self.shutdown_at is None:
            self._begin_shutdown()
        try:
            await asyncio.wait_for(asyncio.shield(self._exit), min(timeout, self.script.kill_after_s))
        except TimeoutError:
            self._die(-9)

    def kill_now(self) -> None:
        self._die(-9)

    # ------------------------------------------------------------ behaviour

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _put(self, msg: WorkerMessage) -> None:
        if not self._exit.done():
            self.said.append(msg)
            self._out.put_nowait(msg)

    def _die(self, code: int) -> None:
        if self._exit.done():
            return
        self._out.put_nowait(None)
        self._exit.set_result(code)
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()

    def _begin_shutdown(self) -> None:
        self.shutdown_at = time.monotonic()

        async def leave() -> None:
            await asyncio.sleep(self.script.stop_s)
            await _until_set(self.script.hold_stop)
            self._die(0)

        self._spawn(leave())

    async def _load(self) -> None:
        await asyncio.sleep(self.script.load_s / 2)
        self._put(Progress(percent=50))
        await asyncio.sleep(self.script.load_s / 2)
        await _until_set(self.script.hold_load)
        if self.script.fail_load is not None:
            self._put(Failed(kind=LoadFailure.LOAD, message=self.script.fail_load))
            self._die(1)
            return
        if self.shutdown_at is not None and not self.script.ready_during_stop:
            return
        self._put(Ready(load_seconds=self.script.load_s, allocated=dict(self.script.allocated), gpu_used_bytes=dict(self.script.gpu_used_bytes)))

    async def _answer(self, message: Request) -> None:
        rid = message.id
        started = time.monotonic()
        if self.script.fail_answer is not None:
            self._put(Error(id=rid, kind=ErrorKind.ENGINE, message=self.script.fail_answer))
            return
        words: list[str] = []
        for i in range(self.script.tokens):
            if rid in self._cancelled:
                break
            await asyncio.sleep(self.script.token_s)
            if i == self.script.tokens - 1:
                await _until_set(self.script.hold_answer)
            words.append(f"w{i}")
            if message.stream:
                self._put(Chunk(id=rid, data={"object": "text_completion", "choices": [{"index": 0, "text": f"w{i} ", "finish_reason": None}]}))
        usage = {"prompt_tokens": 1, "completion_tokens": len(words), "total_tokens": 1 + len(words)}
        timings = Timings(
            ttft_s=self.script.token_s,
            prompt_s=self.script.token_s,
            decode_s=time.monotonic() - started,
            completion_tokens=len(words),
            prompt_tokens=1,
            cached_prompt_tokens=0,
        )
        if rid in self._cancelled or message.stream:
            self._put(End(id=rid, usage=usage, timings=timings))
        else:
            data = {"object": "text_completion", "choices": [{"index": 0, "text": " ".join(words), "finish_reason": "length"}], "usage": usage}
            self._put(Result(id=rid, data=data, usage=usage, timings=timings))


class FakeTransport:
    """Spawns fake workers; ``script`` chooses each one's behaviour from its spec."""

    def __init__(self, script: FakeScript | Callable[[WorkerSpec], FakeScript] | None = None) -> None:
        self._script = script or FakeScript()
        self.spawned: list[FakeConnection] = []
        self.dry_runs: list[WorkerSpec] = []  # the specs the load gate dry-ran, in order

    async def dry_run(self, spec: WorkerSpec, env: dict[str, str]) -> DryRun:
        self.dry_runs.append(spec)
        script = self._script(spec) if callable(self._script) else self._script
        return script.dry_run or DryRun(ok=True)

    async def spawn(self, spec: WorkerSpec, env: dict[str, str]) -> FakeConnection:
        script = self._script(spec) if callable(self._script) else self._script
        conn = FakeConnection(spec, env, script)
        self.spawned.append(conn)
        return conn

    def alive(self, name: str | None = None) -> list[FakeConnection]:
        """The fake workers still running (of one model, if named)."""
        return [c for c in self.spawned if c.alive and (name is None or c.spec.name == name)]

    def latest(self, name: str) -> FakeConnection:
        for conn in reversed(self.spawned):
            if conn.spec.name == name:
                return conn
        raise LookupError(f"no fake worker was spawned for {name!r}")

