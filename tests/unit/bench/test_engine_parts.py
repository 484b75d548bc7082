"""bench/engine_parts.py runs end to end at one stream: the in-process engine with its step
profile, the gateway over HTTP and llama.cpp's batch API alone, one row each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.llama

ROOT = Path(__file__).resolve().parents[3]


def test_the_engine_parts_bench_prints_one_row_with_every_path_at_one_stream():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "engine_parts.py"), "--streams", "1", "--tokens", "4"],
        capture_output=True,
        text=True,
        timeout=600,  # a guard against a hang, not a measure: the run takes seconds
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    header, _, *rows = lines
    assert len(rows) == 1
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in rows[0].strip("|").split("|")]))
    assert cells["streams"] == "1"
    assert int(cells["steps"]) >= 4  # the prompt, then a token a step
    assert float(cells["llama_decode ms/step"]) > 0
    parts = ["schedule ms", "batch ms", "sample ms", "text ms", "send ms"]
    assert sum(float(cells[p]) for p in parts) == pytest.approx(float(cells["outside decode ms/step"]), abs=0.005)
    off, on = (float(v) for v in cells["engine tok/s (in-process: profiler off, on)"].split(","))
    assert off > 0 and on > 0
    for path in ("gateway tok/s (HTTP)", "batch API alone tok/s"):
        assert float(cells[path]) > 0, path


def test_a_pipeline_threshold_that_is_no_number_off_or_auto_is_refused_before_anything_runs():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "engine_parts.py"), "--pipeline-min-tokens", "eight"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "--pipeline-min-tokens: 'eight' (a whole number, 'off' or 'auto')" in proc.stderr
    assert "|" not in proc.stdout
