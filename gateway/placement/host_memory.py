"""The host's memory (RAM), read when asked: the host bar of the web page's memory map."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class HostMemory:
    total_bytes: int
    available_bytes: int  # what new allocations can get without swapping (page cache included)


def parse_meminfo(text: str) -> HostMemory | None:
    """``MemTotal`` and ``MemAvailable`` from /proc/meminfo's text (values in kB)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key.strip()] = int(fields[0]) * 1024
    if "MemTotal" not in values:
        return None
    return HostMemory(values["MemTotal"], values.get("MemAvailable", values.get("MemFree", 0)))


def read_host_memory(meminfo: Path = MEMINFO) -> HostMemory | None:
    """Linux's /proc/meminfo; elsewhere POSIX sysconf (free pages, not "available"); None if neither."""
    try:
        parsed = parse_meminfo(meminfo.read_text())
    except OSError:
        parsed = None
    if parsed is not None:
        return parsed
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return HostMemory(os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page)
    except (AttributeError, OSError, ValueError):
        return None
