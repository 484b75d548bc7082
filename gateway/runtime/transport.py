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
from gateway.engine.protocol import Command, Shutdown, WorkerMessage, WorkerSpec, decode_worker_message, decode_worker_messages, encode

log = logging.getLogger("gateway.runtime")

STDERR_TAIL_LINES = 200  # also what `gateway logs NAME` shows
STREAM_LIMIT = 64 * 1024 * 1024  # one protocol line may carry a large embedding batch
WORKER_MODULE = "gateway.engine.worker"
READ_SIZE = 1024 * 1024  # the most one read of the worker's output takes


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
        # What the pipe holds is read at once and its whole lines decoded together (a decode
        # step writes a chunk line per stream in one write: 64 streams, 64 lines a read), not
        # a readline and a decode per line.
        stream = self._proc.stdout
        if stream is None:
            return
        partial: list[bytes] = []  # the pieces of a line not ended yet
        partial_size = 0
        while data := await stream.read(READ_SIZE):
            end = data.rfind(b"\n") + 1
            if partial_size + (data.find(b"\n") + 1 if end else len(data)) > self._line_limit:
                await self._abandon(stream)
                raise ProtocolError(f"the worker wrote a line over the {self._line_limit / 2**20:g} MiB limit")
            if not end:
                partial.append(data)
                partial_size += len(data)
                continue
            lines = data[:end]
            if partial:
                lines = b"".join([*partial, lines])
                partial.clear()
            partial_size = len(data) - end
            if partial_size:
                partial.append(data[end:])
            messages, broken = _decode_lines(lines)
            for message in messages:
                yield message
            if broken is not None:
                await self._abandon(stream)
                raise ProtocolError(broken)
        if partial:  # the output ended inside a line: what there is of it, as readline gave it
            messages, broken = _decode_lines(b"".join(partial))
            for message in messages:
                yield message
            if broken is not None:
                await self._abandon(stream)
                raise ProtocolError(broken)

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


def _decode_lines(lines: bytes) -> tuple[list[WorkerMessage], str | None]:
    """The messages of whole lines, decoded together; when a line is not a message, the
    messages before it (as a reader line by line would have seen them) and what is wrong."""
    try:
        return decode_worker_messages(lines), None
    except ValueError:  # msgspec.DecodeError (ValidationError too) is one
        pass
    messages = []
    for line in lines.split(b"\n"):
        if not line.strip():
            continue
        try:
            messages.append(decode_worker_message(line))
        except ValueError as exc:
            return messages, f"the worker wrote a line that is not a message ({exc}): {line[:200]!r}"
    return messages, None


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _wait_exit(proc: asyncio.subprocess.Process, timeout: float | None) -> bool:
    try:
        await asyncio.wait_for(proc.wait(), timeout)
        return True
    except TimeoutError:
        return False
