"""A real model worker (``python -m gateway.engine.worker``) driven over its protocol, for the
engine's tests (tests/system/test_worker.py, tests/system/test_batching.py); the ``spawn``
fixture (tests/conftest.py) starts them and kills them after the test.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from gateway.engine.protocol import WorkerSpec

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 30.0
GEMMA_TIMEOUT_S = 180.0  # a loaded 2-core machine decodes Gemma at a few tokens/s
TERMINAL = ("result", "end", "error")


def decode(line: bytes) -> dict:
    """A worker's line as raw JSON: these tests speak the wire itself, so they also pin its JSON
    (gateway.engine.protocol's Structs must keep encoding to it)."""
    return msgspec.json.decode(line)


def encode(message: dict) -> bytes:
    return msgspec.json.encode(message) + b"\n"


# The tiny model's own greedy choice after "hello world" is a run of UTF-8 lead bytes, during
# which llama-cpp-python neither emits text nor counts max_tokens: the bias makes it say "aaaa...".
GREEDY = {"prompt": "hello world", "temperature": 0.0, "logit_bias": {"97": 50.0}}


class WorkerProcess:
    """A running worker: messages in, timestamped messages out, stderr drained.

    stderr must be drained: llama.cpp's verbose log is ~135 KB for Gemma, more than a pipe
    holds, and an unread pipe would block the worker.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.engine.worker", spec.to_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        self._messages: queue.Queue[tuple[float, dict] | None] = queue.Queue()
        self._stderr = bytearray()
        # The output hold (``output_held_after``): while ``_reading`` is clear, nothing reads the
        # worker's stdout, so the worker blocks on its next write once the pipe is full.
        self._reading = threading.Event()
        self._reading.set()
        self._hold_after: Callable[[dict], bool] | None = None
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            message = decode(line)
            self._messages.put((time.monotonic(), message))
            hold = self._hold_after
            if hold is not None and hold(message):
                self._hold_after = None
                self._reading.clear()
            self._reading.wait()
        self._messages.put(None)

    @contextlib.contextmanager
    def output_held_after(self, matches: Callable[[dict], bool]) -> Iterator[None]:
        """Stop reading the worker's output right after the first message that ``matches``, until
        the block ends.

        The worker writes each decode step's lines from its decode loop, so once the pipe (64 KiB)
        and the reader's buffer are full, its next write blocks and its generations stop: past the
        held message a stream can make only what fits there (a few hundred chunks), however fast
        the machine. A test that must act while a long generation is still running (a cancel)
        holds it this way instead of racing it. Messages read before the hold stay available.
        """
        self._hold_after = matches
        try:
            yield
        finally:
            self._hold_after = None
            self._reading.set()

    def _read_stderr(self) -> None:
        while chunk := self.proc.stderr.read1(65536):
            self._stderr += chunk

    def stderr_tail(self) -> str:
        return bytes(self._stderr[-3000:]).decode("utf-8", "replace")

    def send(self, **message) -> None:
        self.proc.stdin.write(encode(message))
        self.proc.stdin.flush()

    def request(self, request_id: int, op: str, params: dict, *, stream: bool = False) -> None:
        self.send(type="request", id=request_id, op=op, stream=stream, params=params)

    def recv_timed(self, timeout: float = TIMEOUT_S) -> tuple[float, dict]:
        try:
            item = self._messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout} s; stderr tail:\n{self.stderr_tail()}") from None
        if item is None:
            self._messages.put(None)  # stay closed for later calls
            raise AssertionError(f"worker closed its output; stderr tail:\n{self.stderr_tail()}")
        return item

    def recv(self, timeout: float = TIMEOUT_S) -> dict:
        return self.recv_timed(timeout)[1]

    def wait_ready(self) -> tuple[list[dict], dict]:
        """(the progress messages, the ready message)."""
        progress = []
        while (message := self.recv())["type"] == "progress":
            progress.append(message)
        assert message["type"] == "ready", message
        return progress, message

    def answer(self, request_id: int, timeout: float = TIMEOUT_S) -> list[dict]:
        """Every message for one request, up to its terminal one (other ids are skipped)."""
        deadline = time.monotonic() + timeout
        out = []
        while True:
            message = self.recv(max(0.0, deadline - time.monotonic()))
            if message.get("id") == request_id:
                out.append(message)
                if message["type"] in TERMINAL:
                    return out

    def until_closed(self, timeout: float = TIMEOUT_S) -> list[dict]:
        """Every message until the worker closes its output (``timeout`` guards each wait)."""
        out = []
        while True:
            try:
                item = self._messages.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no message within {timeout} s; stderr tail:\n{self.stderr_tail()}") from None
            if item is None:
                self._messages.put(None)
                return out
            out.append(item[1])

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        self._reading.set()  # a held reader reads on to EOF and ends
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass
