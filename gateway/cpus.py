"""The CPUs this process may run on: read by the launch (threads per model) and by a worker (whether
its decode leaves a core for the decode loop's own work)."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and taskset set),
    else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
