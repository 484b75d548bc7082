"""Host memory for the web page's host bar."""

from __future__ import annotations

from gateway.placement.host_memory import parse_meminfo, read_host_memory

MEMINFO = """MemTotal:       24683264 kB
MemFree:         1048576 kB
MemAvailable:   20971520 kB
Buffers:          123456 kB
"""


def test_meminfo_gives_total_and_available_bytes():
    m = parse_meminfo(MEMINFO)
    assert m is not None
    assert m.total_bytes == 24683264 * 1024 and m.available_bytes == 20971520 * 1024


def test_meminfo_without_available_falls_back_to_free_and_without_total_is_unknown():
    old_kernel = parse_meminfo("MemTotal: 2048 kB\nMemFree: 1024 kB\n")
    assert old_kernel is not None and old_kernel.available_bytes == 1024 * 1024
    assert parse_meminfo("nothing useful\n") is None


def test_an_unreadable_meminfo_falls_back_to_sysconf(tmp_path):
    m = read_host_memory(tmp_path / "missing")
    assert m is not None and 0 < m.available_bytes <= m.total_bytes
