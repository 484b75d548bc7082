"""`gateway serve` start-up and shutdown: the PoC's single-model form (docs/poc-reference.md),
plans that do not fit, models that fail to load (with and without --strict), SIGTERM draining,
and no orphans after the server is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from testkit.ggufmaker import write_header_only_model, write_tiny_llama
from testkit.serving import clean_env, free_port, kill_group, queue_running, spawn, wait_until, wait_until_answering, worker_held

pytestmark = pytest.mark.llama


def _descendants(pid: int) -> set[int]:
    """Every live process below pid (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _health_status(base: str) -> int | None:
    try:
        return httpx.get(base + "/health", timeout=2).status_code
    except httpx.HTTPError:
        return None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("lifecycle") / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)


def test_poc_single_model_form_answers_the_poc_curl_example(tmp_path, tiny):
    port = free_port()
    log = tmp_path / "serve.log"
    proc = spawn(["serve", "--model", str(tiny), "--port", str(port), "--n-ctx", "256", "--no-mmap"], log)
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_until_answering(base, proc, log) == 200
        # The PoC's curl example sends no "model": the only model answers. Its Python example asks for "local"
        # (docs/poc-reference.md#api-endpoints).
        r = httpx.post(base + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "tiny"
        models = httpx.get(base + "/v1/models", timeout=5).json()["data"]
        assert models[0]["aliases"] == ["local"]
        assert "model tiny: ready" in log.read_text()
    finally:
        kill_group(proc)


def test_serve_refuses_a_plan_that_does_not_fit_before_loading(tmp_path):
    big = write_header_only_model(
        tmp_path / "big.gguf", arch="llama", n_layers=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=32000, vocab_in_header=False
    )
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--model", str(big), "--gpus", "8GiB"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert proc.returncode == 1
    assert "error: the models do not fit:" in proc.stderr
    assert "model 'big' does not fit: on GPU 0 (declared GPU 0, 7,168 MiB left) it is short by" in proc.stderr
    assert "starting" not in proc.stdout + proc.stderr


@pytest.fixture()
def broken_config(tmp_path, tiny) -> tuple[Path, int]:
    # A header llama.cpp cannot load (an architecture it does not know) beside a good model.
    broken = write_header_only_model(
        tmp_path / "broken.gguf", arch="nosuch", n_layers=2, n_embd=64, n_head=4, n_head_kv=4, n_ff=128, n_vocab=300
    )
    port = free_port()
    cfg = tmp_path / "models.toml"
    cfg.write_text(
        # A long backoff: the broken model's next try (an eager model that failed is tried again)
        # comes after the test.
        f'[gateway]\nport = {port}\nrestart_backoff_s = 60\n\n[[models]]\nname = "good"\npath = "{tiny}"\nn_ctx = 256\n\n'
        f'[[models]]\nname = "broken"\npath = "{broken}"\nn_ctx = 256\n'
    )
    return cfg, port


def test_a_model_that_fails_to_load_is_failed_and_the_others_serve(tmp_path, broken_config):
    cfg, port = broken_config
    log = tmp_path / "serve.log"
    proc = spawn(["serve", "--config", str(cfg)], log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_answering(base, proc, log, ok=(200, 503))
        health = httpx.get(base + "/health", timeout=5).json()
        assert health["status"] == "degraded"
        assert health["models"]["good"]["state"] == "ready"
        assert health["models"]["broken"]["state"] == "failed"
        assert "unknown model architecture" in health["models"]["broken"]["reason"]
        r = httpx.post(base + "/v1/completions", json={"model": "broken", "prompt": "x"}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
        r = httpx.post(base + "/v1/completions", json={"model": "good", "prompt": "x", "max_tokens": 2}, timeout=30)
        assert r.status_code == 200
    finally:
        kill_group(proc)


def test_strict_makes_a_load_failure_fatal(tmp_path, broken_config):
    cfg, _ = broken_config
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg), "--strict"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=90,
    )
    assert proc.returncode != 0
    assert "--strict: broken:" in proc.stdout + proc.stderr


def test_sigterm_lets_the_running_request_finish_and_leaves_no_process(tmp_path, tiny):
    port = free_port()
    log = tmp_path / "serve.log"
    proc = spawn(["serve", "--model", str(tiny), "--port", str(port), "--n-ctx", "512"], log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(base, proc, log)
        tree = _descendants(proc.pid)
        assert tree, "no worker processes?"
        result: dict[str, object] = {}

        def long_request() -> None:
            # logit_bias makes the tiny model emit plain "a"s, so max_tokens is honoured.
            r = httpx.post(
                base + "/v1/completions",
                json={"prompt": "a", "max_tokens": 300, "logit_bias": {"97": 50}, "stream": True},
                timeout=60,
            )
            result["status"] = r.status_code
            result["done"] = r.text.rstrip().endswith("data: [DONE]")

        model = httpx.get(base + "/v1/models", timeout=10).json()["data"][0]["id"]
        t = threading.Thread(target=long_request)
        # The worker is stopped until the drain has begun, so the request is surely in flight
        # when SIGTERM comes, however fast the machine.
        with worker_held(base, model):
            t.start()
            wait_until(lambda: queue_running(base, model) == 1, what="the request running")
            proc.send_signal(signal.SIGTERM)
            wait_until(lambda: _health_status(base) == 503, what="/health answering 503 draining")
        t.join(60)
        proc.wait(60)
        assert result == {"status": 200, "done": True}
        wait_until(lambda: not [p for p in tree if _alive(p)], what="every worker process gone")
    finally:
        kill_group(proc)


def test_sigkill_of_the_server_leaves_no_worker_behind(tmp_path, tiny):
    port = free_port()
    log = tmp_path / "serve.log"
    proc = spawn(["serve", "--model", str(tiny), "--port", str(port)], log)
    try:
        wait_until_answering(f"http://127.0.0.1:{port}", proc, log)
        tree = _descendants(proc.pid)
        assert tree
        proc.send_signal(signal.SIGKILL)  # the server process only, not its group
        proc.wait(10)
        wait_until(lambda: not [p for p in tree if _alive(p)], what="every process of the server's tree gone")
    finally:
        kill_group(proc)


def test_during_the_sigterm_drain_health_answers_503_draining(tmp_path, gemma_path):
    port = free_port()
    log = tmp_path / "serve.log"
    cfg = tmp_path / "models.toml"
    cfg.write_text(f'[gateway]\nport = {port}\nshutdown_grace_s = 60\n\n[[models]]\nname = "gemma"\npath = "{gemma_path}"\nn_ctx = 512\n')
    proc = spawn(["serve", "--config", str(cfg)], log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(base, proc, log)
        body = {"prompt": "Once upon a time", "max_tokens": 400, "stream": True}
        with httpx.stream("POST", base + "/v1/completions", json=body, timeout=60) as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # the stream runs
            # Its worker held still: the stream is still running when the drain begins, however
            # fast the machine.
            with worker_held(base, "gemma"):
                proc.send_signal(signal.SIGTERM)
                # The drain begins when the server process has told the app: until then /health is 200.
                wait_until(lambda: httpx.get(base + "/health", timeout=5).status_code != 200, what="/health saying draining")
                health = httpx.get(base + "/health", timeout=5)
                assert health.status_code == 503 and health.json()["status"] == "draining"
                late = httpx.post(base + "/v1/completions", json={"prompt": "a", "max_tokens": 2}, timeout=10)
                assert late.status_code == 503 and late.headers["retry-after"] == "1"
        # The client went away: nothing is in flight, the server stops.
        assert proc.wait(60) == 0
    finally:
        kill_group(proc)
