"""One model's worker process, seen from the gateway: its state machine and its requests.

``WorkerHandle`` is the single owner of a worker: only its own methods and its reader task
change its state (starting -> ready | failed; ready -> stopping -> stopped; ready -> failed when
the process dies). Callers ask it to do things; they never check a state and then act on the
process themselves.

The worker runs in its own process group (``start_new_session``) so stopping it (SIGTERM, then
SIGKILL after a timeout) reaches anything it started; it also dies with its parent (prctl
PDEATHSIG and stdin EOF, see gateway.engine.worker).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from enum import StrEnum
from typing import Any

from gateway.errors import EngineError, ModelUnavailableError
from gateway.engine.protocol import WorkerSpec, decode, encode

log = logging.getLogger("gateway.engine.worker")

STDERR_TAIL_LINES = 40
STREAM_LIMIT = 64 * 1024 * 1024  # one protocol line may carry a large embedding batch


class ModelState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


class WorkerHandle:
    """Starts, talks to and stops one worker process."""

    def __init__(
        self,
        spec: WorkerSpec,
        env: dict[str, str],
        *,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.spec = spec
        self._env = env
        self._on_event = on_event or (lambda name, msg: None)
        self.state = ModelState.STOPPED
        self.reason: str | None = None
        self.progress = 0
        self.allocated: dict[str, Any] = {}
        self.gpu_used_bytes: dict[str, int] = {}
        self.load_seconds: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self) -> None:
        """Spawn the worker; returns at once (``wait_ready`` waits for the load)."""
        self.state = ModelState.STARTING
        self.reason = None
        self.progress = 0
        self._ready.clear()
        self._started_at = time.monotonic()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.engine.worker",
            self.spec.to_json(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            start_new_session=True,
            limit=STREAM_LIMIT,
        )
        self._emit("starting", {"pid": self._proc.pid})
        self._tasks = [
            asyncio.create_task(self._read_messages(self._proc), name=f"{self.spec.name}-stdout"),
            asyncio.create_task(self._read_log(self._proc), name=f"{self.spec.name}-stderr"),
        ]

    async def wait_ready(self, timeout: float | None = None) -> ModelState:
        """Wait until the model is ready or failed (or the timeout passes)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.state

    def _emit(self, name: str, msg: dict[str, Any]) -> None:
        self._on_event(name, {"model": self.spec.name, **msg})

    def _set_failed(self, reason: str) -> None:
        self.state = ModelState.FAILED
        self.reason = reason
        self._ready.set()
        self._emit("failed", {"reason": reason})

    async def _read_log(self, proc: asyncio.subprocess.Process) -> None:
        stream = proc.stderr
        while stream is not None and (line := await stream.readline()):
            text = line.decode(errors="replace").rstrip()
            if text:
                self._stderr_tail.append(text)
                log.debug("[%s] %s", self.spec.name, text)

    async def _read_messages(self, proc: asyncio.subprocess.Process) -> None:
        stream = proc.stdout
        try:
            while stream is not None and (line := await stream.readline()):
                try:
                    msg = decode(line)
                except ValueError:
                    log.warning("[%s] unreadable message from worker: %r", self.spec.name, line[:200])
                    continue
                self._dispatch(msg)
        finally:
            code = await proc.wait()
            self._on_exit(code)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind in ("chunk", "result", "end", "error"):
            queue = self._pending.get(msg.get("id", -1))
            if queue is not None:
                queue.put_nowait(msg)
        elif kind == "progress":
            self.progress = int(msg.get("percent", 0))
            self._emit("progress", {"percent": self.progress})
        elif kind == "ready":
            self.state = ModelState.READY
            self.progress = 100
            self.allocated = msg.get("allocated") or {}
            self.gpu_used_bytes = {str(k): int(v) for k, v in (msg.get("gpu_used_bytes") or {}).items()}
            self.load_seconds = msg.get("load_seconds", time.monotonic() - self._started_at)
            self._ready.set()
            self._emit("ready", {"load_seconds": self.load_seconds})
        elif kind == "failed":
            self._set_failed(str(msg.get("message", "load failed")))

    def _on_exit(self, code: int) -> None:
        for queue in self._pending.values():
            queue.put_nowait({"type": "error", "kind": "worker_exited", "message": f"the model's worker exited (code {code})"})
        if self.state in (ModelState.STOPPING, ModelState.STOPPED):
            self.state = ModelState.STOPPED
            self._ready.set()
            self._emit("stopped", {"code": code})
        elif self.state != ModelState.FAILED:
            was_ready = self.state == ModelState.READY
            tail = " | ".join(list(self._stderr_tail)[-3:])
            reason = f"worker exited with code {code}" + (f": {tail}" if tail else "")
            self._set_failed(reason)
            if was_ready:
                # A crash while serving (not a load failure): the registry may restart it.
                self._emit("crashed", {"reason": reason, "code": code})

    def give_up(self, reason: str) -> None:
        """Stay failed for good (the registry's restart budget is spent)."""
        self._set_failed(reason)

    async def request(self, op: str, params: dict[str, Any], *, stream: bool) -> AsyncIterator[dict[str, Any]]:
        """Send one request; yield its messages up to and including the terminal one.

        Closing the iterator early (a client that went away) cancels the generation in the
        worker, which stops it at the next token.
        """
        if self.state != ModelState.READY or self._proc is None or self._proc.stdin is None:
            raise ModelUnavailableError(f"model {self.spec.name!r} is {self.state.value}")
        rid = next(self._ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending[rid] = queue
        finished = False
        try:
            self._proc.stdin.write(encode({"type": "request", "id": rid, "op": op, "stream": stream, "params": params}))
            await self._proc.stdin.drain()
            while True:
                msg = await queue.get()
                if msg["type"] != "chunk":
                    finished = True
                yield msg
                if finished:
                    return
        except (BrokenPipeError, ConnectionResetError):
            finished = True
            raise EngineError(f"model {self.spec.name!r}: its worker is gone") from None
        finally:
            self._pending.pop(rid, None)
            if not finished:
                self._send_nowait({"type": "cancel", "id": rid})

    def _send_nowait(self, msg: dict[str, Any]) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None and not proc.stdin.is_closing():
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
                proc.stdin.write(encode(msg))

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit; SIGTERM its process group, then SIGKILL after ``timeout``."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            self.state = ModelState.STOPPED
            return
        self.state = ModelState.STOPPING
        self._send_nowait({"type": "shutdown"})
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        if not await self._wait_exit(proc, timeout / 2):
            self._signal_group(proc.pid, signal.SIGTERM)
            if not await self._wait_exit(proc, timeout / 2):
                self._signal_group(proc.pid, signal.SIGKILL)
                await self._wait_exit(proc, None)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 2)
        self.state = ModelState.STOPPED

    def kill_now(self) -> None:
        """SIGKILL the process group without waiting (for interpreter exit paths)."""
        if self._proc is not None and self._proc.returncode is None:
            self._signal_group(self._proc.pid, signal.SIGKILL)

    @staticmethod
    def _signal_group(pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    @staticmethod
    async def _wait_exit(proc: asyncio.subprocess.Process, timeout: float | None) -> bool:
        try:
            await asyncio.wait_for(proc.wait(), timeout)
            return True
        except TimeoutError:
            return False
