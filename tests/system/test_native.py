"""Every process that loads a model opens llama.cpp's native library before numpy's.

On a CUDA build the other order crashed every model load (gateway/engine/native.py). The proof is
the dynamic loader's own log (``LD_DEBUG=files``) of real processes: the worker, the dry run of
``plan --verify`` and the concurrency benchmark's child, each loading the tiny model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.engine.protocol import Progress, Ready, Shutdown, WorkerSpec, decode_worker_message, encode
from testkit.ggufmaker import write_tiny_llama

pytestmark = pytest.mark.llama

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> WorkerSpec:
    path = write_tiny_llama(tmp_path_factory.mktemp("native") / "tiny.gguf")
    return WorkerSpec(name="tiny", model_path=str(path), n_ctx=256, n_threads=1)


def loader_env(prefix: Path) -> dict[str, str]:
    # The loader writes its log to <prefix>.<pid>, one file per process, not to stderr.
    return {**os.environ, "LD_DEBUG": "files", "LD_DEBUG_OUTPUT": str(prefix), "PYTHONPATH": str(REPO)}


def first_opened(prefix: Path) -> tuple[int | None, int | None]:
    """Line numbers at which the loader first opened a library of llama_cpp's and of numpy's,
    in the log of the process that opened llama_cpp's (its children write logs of their own)."""
    for log in sorted(prefix.parent.glob(prefix.name + ".*")):
        lines = [line for line in log.read_text(errors="replace").splitlines() if "file=" in line]
        llama = next((i for i, line in enumerate(lines) if "/llama_cpp/lib/" in line), None)
        if llama is not None:
            numpy = next((i for i, line in enumerate(lines) if "/numpy/" in line or "numpy.libs" in line), None)
            return llama, numpy
    return None, None


def assert_llama_first(prefix: Path) -> None:
    llama, numpy = first_opened(prefix)
    assert llama is not None, "no process opened llama.cpp's library"
    assert numpy is not None, "numpy is never loaded: the check would prove nothing"
    assert llama < numpy, f"numpy's shared objects were opened (line {numpy}) before llama.cpp's (line {llama})"


def test_worker_opens_llama_before_numpy(tiny_spec, tmp_path):
    prefix = tmp_path / "ld"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.engine.worker", tiny_spec.to_json()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO, env=loader_env(prefix),
    )  # fmt: skip
    try:
        message = decode_worker_message(proc.stdout.readline())
        while isinstance(message, Progress):
            message = decode_worker_message(proc.stdout.readline())
        assert isinstance(message, Ready), message
        proc.stdin.write(encode(Shutdown()))
        proc.stdin.close()
        proc.wait(TIMEOUT_S)
    finally:
        proc.kill()
        proc.wait()
    assert_llama_first(prefix)


def test_dry_run_opens_llama_before_numpy(tiny_spec, tmp_path):
    prefix = tmp_path / "ld"
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.engine.dry_run", tiny_spec.to_json()],
        capture_output=True, cwd=REPO, env=loader_env(prefix), timeout=TIMEOUT_S,
    )  # fmt: skip
    assert json.loads(proc.stdout.decode().splitlines()[-1])["ok"], proc.stderr.decode()[-2000:]
    assert_llama_first(prefix)


def test_concurrency_bench_child_opens_llama_before_numpy(tiny_spec, tmp_path):
    prefix = tmp_path / "ld"
    args = {"kind": "llama_batch", "model": tiny_spec.model_path, "clients": 1, "tokens": 2, "n_ctx": 256, "threads": 1, "bias": {}, "repeat": 1}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "concurrency.py"), "--child", json.dumps(args)],
        capture_output=True, cwd=REPO, env=loader_env(prefix), timeout=TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert_llama_first(prefix)


def test_loading_llama_after_numpy_is_refused_on_every_machine():
    code = "import numpy\nfrom gateway.engine import native\nnative.load_first()\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=TIMEOUT_S, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1
    assert "ImportOrderError: numpy was imported before llama.cpp's native library" in proc.stderr.decode()


def test_loading_llama_first_imports_nothing_that_needs_numpy_before_it():
    # The worker's own module-level imports must leave numpy out: load_first() comes after them.
    code = "import sys\nimport gateway.engine.worker, gateway.engine.dry_run\nprint('numpy' in sys.modules)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=TIMEOUT_S, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.decode().strip() == "False", proc.stderr.decode()
