"""bench/app_chunk_cost.py runs end to end on a couple of streams and names each process's CPU a chunk."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.llama

ROOT = Path(__file__).resolve().parents[3]


def test_the_app_chunk_cost_bench_prints_the_cpu_a_chunk_of_the_app_and_the_worker():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "app_chunk_cost.py"), "--streams", "2", "--tokens", "4", "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=600,  # a guard against a hang, not a measure: the run takes seconds
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    roles = dict(re.findall(r"^\s+(server|app|worker)\s+CPU [\d.]+ s, ([\d.]+) ms a chunk$", proc.stdout, re.M))
    assert set(roles) == {"server", "app", "worker"}, proc.stdout
    assert all(float(v) >= 0 for v in roles.values())  # (a short run may take under a clock tick of CPU)
    assert re.search(r"tokens/s per run: \d+", proc.stdout)
