"""Starting the real gateway (`gateway serve` in its own process group) for tests and benches."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

# The bound on a test's wait for an event (a state reached, an answer): it only guards against a
# hang, so a passing test never waits it out; generous, since a busy 2-core CI machine at load 8
# takes seconds for what takes milliseconds alone.
HANG_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    """The environment without GATEWAY_* overrides that would change the config under test."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


@dataclass
class Gateway:
    base: str
    proc: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def spawn(args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`gateway <args>` in a new process group, its output to ``log`` (``env`` added to its environment)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**clean_env(), **(env or {})},
            start_new_session=True,
        )


_START_GATE = """\
import os, sys, time
_gate = os.environ.get("TEST_WORKER_START_GATE")
if _gate and "{module}" in getattr(sys, "orig_argv", ()):
    while not os.path.exists(_gate):
        time.sleep(0.02)
"""


def worker_start_gate(folder: Path) -> tuple[dict[str, str], Path]:
    """An environment for ``spawn`` in which every model worker waits, before it even imports
    anything, until the returned gate file exists (the test creates it): the gateway stays in
    start-up, with no model ready, for exactly as long as the test wants, however fast the machine.
    A ``sitecustomize`` in ``folder`` does it; only processes started as the worker module wait.
    """
    from gateway.runtime.transport import WORKER_MODULE

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_START_GATE.format(module=WORKER_MODULE))
    gate = folder / "open"
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "TEST_WORKER_START_GATE": str(gate)}, gate


def wait_until_answering(base: str, proc: subprocess.Popen, log: Path, timeout: float = 90, ok: Sequence[int] = (200,)) -> int:
    """Poll /health until it answers with one of ``ok``; fail with the log if the server dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            status = httpx.get(base + "/health", timeout=1).status_code
            if status in ok:
                return status
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not answering after {timeout:g} s:\n{log.read_text(errors='replace')[-4000:]}")


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@contextlib.contextmanager
def running_gateway(config: Path, port: int, log: Path, ok: Sequence[int] = (200,), args: Sequence[str] = ()) -> Iterator[Gateway]:
    """`gateway serve --config config` until the block ends; its whole process group is killed then."""
    proc = spawn(["serve", "--config", str(config), *args], log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_answering(base, proc, log, ok=ok)
        yield Gateway(base, proc, log)
    finally:
        kill_group(proc)


@contextlib.contextmanager
def worker_held(base: str, model: str, headers: dict[str, str] | None = None) -> Iterator[int]:
    """The model's worker process stopped (SIGSTOP) until the block ends (SIGCONT), whatever happens.

    A request sent meanwhile holds its run slot and cannot end, however fast the machine: a test
    that needs a model busy uses this instead of a long generation and a guessed sleep. The worker
    then goes on where it stopped, so the held request still completes in full. Yields its pid.
    """
    models = httpx.get(base + "/v1/models", headers=headers, timeout=10).json()["data"]
    pid = next(m for m in models if m["id"] == model)["pid"]
    if not isinstance(pid, int):
        raise AssertionError(f"model {model!r} has no running worker to hold: {models}")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


def wait_until(check, timeout: float = HANG_S, what: str = "condition") -> None:
    """Poll ``check`` until it is true; ``timeout`` only guards against a hang (``HANG_S``)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s")
        time.sleep(0.05)


def queue_running(base: str, model: str, headers: dict[str, str] | None = None) -> int:
    """How many requests the model is running now, as the gateway's /v1/models says."""
    models = httpx.get(base + "/v1/models", headers=headers, timeout=10).json()["data"]
    return next(m for m in models if m["id"] == model)["queue"]["running"]
