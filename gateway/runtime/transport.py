"""The seam between the model pool and a worker process, as httpx's transports are for requests.

A ``WorkerTransport`` spawns a worker for a spec and hands back a ``WorkerConnection``: send
protocol messages (gateway.engine.protocol), read the worker's messages, wait for its exit, stop
it. ``SubprocessTransport`` runs ``python -m gateway.engine.worker`` for real;
``gateway.runtime.fake.FakeTransport`` is an in-memory worker that tests script (load time, crash,
slow stop) to drive races in milliseconds.

The real worker runs in its own process group (``start_new_session``), so stopping it reaches
anything it started: a "shutdown" message and EOF first, then SIGTERM to the group, then SIGKILL.
It also dies with its parent (PR_SET_PDEATHSIG and stdin EOF, see gateway.engine.worker).

Messages cross this seam as the protocol's Structs: ``send`` takes a ``Command``, ``messages``
yields each line decoded once into a ``WorkerMessage``. A worker that breaks the protocol (a line
over ``STREAM_LIMIT``, a line that is not one of its messages: not JSON, an unknown "type", a
missing or mistyped field) is killed at once and its output discarded to the end, then ``messages`` raises
``ProtocolError``: the pool treats it as a crash (issue 21, item 2: a reader that raised with
the process alive waited for its exit forever, and the model with it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Protocol

from gateway.engine.dry_run import DryRun
from gateway.placement.verify import dry_run
from gateway.engine.protocol import Command, Shutdown, WorkerMessage, WorkerSpec, decode_worker_message, encode

log = logging.getLogger("gateway.runtime")

STDERR_TAIL_LINES = 200  # also what `gateway logs NAME` shows
STREAM_LIMIT = 64 * 1024 * 1024  # one protocol line may carry a large embedding batch
WORKER_MODULE = "gateway.engine.worker"


class WorkerGone(Exception):
    """The worker's stdin is closed: it exited or is exiting."""


class ProtocolError(Exception):
    """The worker broke the line protocol; it has been killed."""


class WorkerConnection(Protocol):
    """One running worker, as the pool sees it."""

    @property
    def pid(self) -> int | None: ...

    def send(self, message: Command) -> None:
        """Queue one message for the worker; raises ``WorkerGone`` once it cannot take any."""

    def messages(self) -> AsyncIterator[WorkerMessage]:
        """The worker's messages, decoded, until its output ends. ``ProtocolError`` once it
        sends something that is not a message: it is killed first."""

    async def wait(self) -> int:
        """Wait for the exit; the exit code."""

    def stderr_tail(self) -> list[str]:
        """The last lines the worker wrote to stderr (llama.cpp's log), for failure reasons."""

    async def terminate(self, timeout: float) -> None:
        """Ask it to exit ("shutdown", EOF), then SIGTERM, then SIGKILL; returns once it is gone."""

    def kill_now(self) -> None:
        """SIGKILL without waiting (interpreter exit paths)."""


class WorkerTransport(Protocol):
    async def spawn(self, spec: WorkerSpec, env: dict[str, str]) -> WorkerConnection: ...

    async def dry_run(self, spec: WorkerSpec, env: dict[str, str]) -> DryRun:
        """llama.cpp's no_alloc load of ``spec`` (the load gate, gateway.placement.gate)."""
        ...


class SubprocessConnection:
    """A real worker process and its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str, line_limit: int = STREAM_LIMIT) -> None:
        self._proc = proc
        self._name = name
        self._line_limit = line_limit
        self._tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._log_task = asyncio.create_task(self._read_log(), name=f"{name}-stderr")

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def send(self, message: Command) -> None:
        stdin = self._proc.stdin
        if stdin is None or stdin.is_closing():
            raise WorkerGone(self._name)
        try:
            stdin.write(encode(message))
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            raise WorkerGone(self._name) from None

    async def messages(self) -> AsyncIterator[WorkerMessage]:
        stream = self._proc.stdout
        while stream is not None:
            try:
                line = await stream.readline()
            except ValueError:  # asyncio's "chunk is longer than limit" (the line is dropped)
                await self._abandon(stream)
                raise ProtocolError(f"the worker wrote a line over the {self._line_limit / 2**20:g} MiB limit") from None
            if not line:
                return
            try:
                message = decode_worker_message(line)
            except ValueError as exc:  # msgspec.DecodeError (ValidationError too) is one
                await self._abandon(stream)
                raise ProtocolError(f"the worker wrote a line that is not a message ({exc}): {line[:200]!r}") from None
            yield message

    async def _abandon(self, stream: asyncio.StreamReader) -> None:
        """Kill the worker and read its output to the end, so that its exit can be awaited (a
        pipe paused with unread data never reports its end)."""
        self.kill_now()
        while await stream.read(2**20):
            pass

    async def wait(self) -> int:
        code = await self._proc.wait()
        # The tail names the reason of a crash: read it to the end before anyone asks.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self._log_task), 2)
        return code

    def stderr_tail(self) -> list[str]:
        return list(self._tail)

    async def _read_log(self) -> None:
        stream = self._proc.stderr
        while stream is not None and (line := await stream.readline()):
            text = line.decode(errors="replace").rstrip()
            if text:
                self._tail.append(text)
                log.debug("[%s] %s", self._name, text)

    async def terminate(self, timeout: float) -> None:
        proc = self._proc
        if proc.returncode is not None:
            return
        with contextlib.suppress(WorkerGone):
            self.send(Shutdown())
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        if not await _wait_exit(proc, timeout / 2):
            _signal_group(proc.pid, signal.SIGTERM)
            if not await _wait_exit(proc, timeout / 2):
                _signal_group(proc.pid, signal.SIGKILL)
                await _wait_exit(proc, None)

    def kill_now(self) -> None:
        if self._proc.returncode is None:
            _signal_group(self._proc.pid, signal.SIGKILL)


class SubprocessTransport:
    """Spawns ``python -m gateway.engine.worker '<spec>'`` in its own process group; a line of its
    output may be up to ``line_limit`` bytes."""

    def __init__(self, python: str = sys.executable, module: str = WORKER_MODULE, line_limit: int = STREAM_LIMIT) -> None:
        self._python = python
        self._module = module
        self._line_limit = line_limit

    async def dry_run(self, spec: WorkerSpec, env: dict[str, str]) -> DryRun:
        return await asyncio.to_thread(dry_run, spec, env)  # plan --verify's runner, in a child process

    async def spawn(self, spec: WorkerSpec, env: dict[str, str]) -> SubprocessConnection:
        proc = await asyncio.create_subprocess_exec(
            self._python,
            "-m",
            self._module,
            spec.to_json(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
            limit=self._line_limit,
        )
        return SubprocessConnection(proc, spec.name, self._line_limit)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _wait_exit(proc: asyncio.subprocess.Process, timeout: float | None) -> bool:
    try:
        await asyncio.wait_for(proc.wait(), timeout)
        return True
    except TimeoutError:
        return False
