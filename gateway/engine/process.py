"""Process plumbing shared by the engine's child processes (the worker and the dry run)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
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
