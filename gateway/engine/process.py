"""Process plumbing shared by the engine's child processes (the worker and the dry run)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import BinaryIO

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """Have the kernel SIGKILL us when our parent dies, however it dies (Linux only).

    The signal follows the parent *thread* that spawned us: the gateway must spawn workers from
    a thread that lives as long as they do. A parent that died before this call is caught by the
    EOF on stdin instead.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        print(f"worker: prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}", file=sys.stderr)


def take_stdout() -> BinaryIO:
    """A private copy of fd 1 for the protocol; fd 1 itself then points at stderr."""
    fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(fd, "wb")


def one_line(text: str) -> str:
    return " ".join(text.split())


# A native crash in a child that enabled faulthandler (the worker, the dry run) ends its stderr
# with the crashing thread's Python stack, most recent call first:
#   Fatal Python error: Segmentation fault
#   <blank>
#   Stack (most recent call first):        (or "Current thread 0x... (most recent call first):")
#     File "/.../gateway/engine/loading.py", line 120 in load_model
_FAULT_HEADER = "Fatal Python error:"
_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+) in (?P<func>.+)$')
STACK_FRAMES = 5  # how many frames of a crash's stack a failure reason names
LOG_LINES = 3  # how many of the last stderr lines a failure reason names otherwise


def exit_reason(what: str, code: int | None, stderr_lines: Sequence[str]) -> str:
    """Why a child process exited, in one line for /health, /ui and the logs: its exit code (and
    signal), then where a native crash happened (the first frames of faulthandler's Python stack
    and the log lines just before it) or else the last lines it wrote to stderr."""
    head = f"{what} exited with code {code}"
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            head += f" ({signal.Signals(-code).name})"
    lines = list(stderr_lines)
    crash = _last_fault(lines)
    if crash is None:
        tail = " | ".join(lines[-LOG_LINES:])
        return head + (f": {tail}" if tail else "")
    start, fault = crash
    frames = [m for m in (_FRAME.match(line) for line in lines[start + 1 :]) if m]
    where = " <- ".join(f"{_short(m['path'])}:{m['line']} in {m['func'].strip()}" for m in frames[:STACK_FRAMES])
    if len(frames) > STACK_FRAMES:
        where += " <- ..."
    before = " | ".join(line for line in lines[max(0, start - 2) : start] if line.strip())
    return (
        f"{head}: {fault}"
        + (f"; Python stack (most recent call first): {where}" if where else "")
        + (f"; last log lines: {before}" if before else "")
    )


def _last_fault(lines: Sequence[str]) -> tuple[int, str] | None:
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(_FAULT_HEADER):
            return i, lines[i].strip()
    return None


def _short(path: str) -> str:
    """The last three parts of a frame's path (gateway/engine/loading.py), enough to find it."""
    return "/".join(path.replace("\\", "/").split("/")[-3:])
