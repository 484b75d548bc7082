"""A worker killed under traffic: 503s (not hangs) for its model, nothing lost for the other,
a restart with backoff, and a model left failed once its restart budget is spent."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import httpx
import pytest

from testkit.ggufmaker import write_tiny_llama
from testkit.serving import HANG_S, free_port, running_gateway, wait_until

pytestmark = pytest.mark.llama


@pytest.fixture()
def two_models(tmp_path):
    tiny = write_tiny_llama(tmp_path / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
    port = free_port()
    cfg = tmp_path / "models.toml"
    cfg.write_text(
        f"""
[gateway]
port = {port}
restart_backoff_s = 0.2
restart_max_failures = 2
restart_window_s = 60

[[models]]
name = "victim"
path = "{tiny}"
n_ctx = 256
queue_size = 64

[[models]]
name = "bystander"
path = "{tiny}"
n_ctx = 256
queue_size = 64
"""
    )
    with running_gateway(cfg, port, tmp_path / "serve.log") as gw:
        yield gw.base, gw.log


def _pid(base: str, model: str) -> int | None:
    return httpx.get(f"{base}/v1/models/{model}", timeout=5).json()["pid"]


def _new_pid(base: str, model: str, old: int | None = None) -> int:
    """The model's worker pid once it has one other than ``old`` (a restart came)."""
    pids: list[int | None] = [None]

    def running() -> bool:
        pids[0] = _pid(base, model)
        return pids[0] is not None and pids[0] != old

    wait_until(running, what=f"a worker for {model} other than {old}")
    return pids[0]


def _ask(base: str, model: str) -> int:
    try:
        r = httpx.post(
            f"{base}/v1/completions",
            json={"model": model, "prompt": "a", "max_tokens": 8, "logit_bias": {"97": 50}},
            timeout=HANG_S,
        )
        return r.status_code
    except httpx.TimeoutException:
        return -1  # a hang


def test_killed_worker_gets_503s_others_serve_and_it_comes_back(two_models):
    base, _ = two_models
    results: dict[str, Counter] = {"victim": Counter(), "bystander": Counter()}
    stop = threading.Event()

    def traffic(model: str) -> None:
        while not stop.is_set():
            results[model][_ask(base, model)] += 1

    threads = [threading.Thread(target=traffic, args=(m,)) for m in ("victim", "bystander", "victim", "bystander")]
    for t in threads:
        t.start()
    # Both models answering before the kill, and the victim answering again after its restart.
    wait_until(lambda: results["victim"][200] > 0 and results["bystander"][200] > 0, what="traffic answered")
    old = _pid(base, "victim")
    os.kill(old, signal.SIGKILL)
    _new_pid(base, "victim", old)  # (the wait's timeout is only a hang guard)
    served_before_restart = results["victim"][200]
    wait_until(lambda: results["victim"][200] > served_before_restart, what="the restarted victim answering")
    stop.set()
    for t in threads:
        t.join(HANG_S)
    assert set(results["bystander"]) == {200}, results
    assert -1 not in results["victim"], results  # no hangs
    assert set(results["victim"]) <= {200, 503}, results
    assert results["victim"][200] > 0
    metrics = httpx.get(base + "/metrics", timeout=5).text
    assert 'vram_gateway_worker_restarts_total{model="victim"} 1.0' in metrics


def test_model_is_left_failed_after_too_many_crashes(two_models):
    base, _ = two_models
    killed = None
    for _ in range(3):
        killed = _new_pid(base, "victim", killed)  # the first worker, then each restart's
        os.kill(killed, signal.SIGKILL)

    def given_up() -> bool:
        model = httpx.get(base + "/v1/models/victim", timeout=5).json()
        return model["state"] == "failed" and model["reason"].startswith("gave up")

    wait_until(given_up, what="the victim given up")
    model = httpx.get(base + "/v1/models/victim", timeout=5).json()
    assert model["state"] == "failed"
    assert model["reason"].startswith("gave up after 3 crashes within 60 s; last: worker exited with code -9")
    assert _ask(base, "victim") == 503
    assert _ask(base, "bystander") == 200


def test_a_worker_killed_by_a_native_crash_reports_its_python_stack(tmp_path):
    tiny = write_tiny_llama(tmp_path / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
    port = free_port()
    cfg = tmp_path / "models.toml"
    # restart_max_failures = 0: the first crash leaves the model failed, its reason in view.
    cfg.write_text(f'[gateway]\nport = {port}\nrestart_max_failures = 0\n\n[[models]]\nname = "victim"\npath = "{tiny}"\nn_ctx = 256\n')
    with running_gateway(cfg, port, tmp_path / "serve.log") as gw:
        os.kill(_new_pid(gw.base, "victim"), signal.SIGSEGV)  # faulthandler reports it as it would a real segfault
        wait_until(lambda: httpx.get(gw.base + "/health", timeout=5).json()["models"]["victim"]["state"] == "failed", what="victim failed")
        reason = httpx.get(gw.base + "/health", timeout=5).json()["models"]["victim"]["reason"]
        assert "worker exited with code -11 (SIGSEGV): Fatal Python error: Segmentation fault; Python stack (most recent call first): " in reason, reason
        assert "gateway/engine/" in reason, reason  # a frame of ours, file and line
        assert "Fatal Python error: Segmentation fault; Python stack" in gw.log.read_text()


def _state(base: str, model: str) -> dict:
    return httpx.get(f"{base}/v1/models/{model}", timeout=5).json()


def _wait(check, timeout: float = HANG_S) -> None:  # the timeout only guards against a hang
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_a_model_whose_file_broke_during_its_restart_is_tried_again_until_it_loads(tmp_path):
    tiny = write_tiny_llama(tmp_path / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
    good = tiny.read_bytes()
    port = free_port()
    cfg = tmp_path / "models.toml"
    cfg.write_text(f'[gateway]\nport = {port}\nrestart_backoff_s = 0.2\n\n[[models]]\nname = "m"\npath = "{tiny}"\nn_ctx = 256\n')
    with running_gateway(cfg, port, tmp_path / "serve.log") as gw:
        tiny.write_bytes(good[:4096])  # truncated while its worker is killed
        os.kill(_state(gw.base, "m")["pid"], signal.SIGKILL)

        def restart_failed() -> bool:  # failed, and not by the kill: the restart's load failed
            model = _state(gw.base, "m")
            return model["state"] == "failed" and "SIGKILL" not in (model["reason"] or "")

        _wait(restart_failed)
        tiny.write_bytes(good)  # mended: the pool's next try loads it, nobody asks
        _wait(lambda: _state(gw.base, "m")["state"] == "ready")
        assert _ask(gw.base, "m") == 200


@pytest.mark.parametrize("action", ["admin_load", "reload"])
def test_admin_load_and_reload_start_a_failed_eager_model_again(tmp_path, action):
    tiny = write_tiny_llama(tmp_path / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
    good = tiny.read_bytes()
    port = free_port()
    cfg = tmp_path / "models.toml"
    # No restart at all: the kill leaves the model failed, and only the operator brings it back.
    cfg.write_text(f'[gateway]\nport = {port}\nrestart_max_failures = 0\n\n[[models]]\nname = "m"\npath = "{tiny}"\nn_ctx = 256\n')
    with running_gateway(cfg, port, tmp_path / "serve.log") as gw:
        tiny.write_bytes(good[:4096])
        os.kill(_state(gw.base, "m")["pid"], signal.SIGKILL)
        _wait(lambda: (_state(gw.base, "m")["reason"] or "").startswith("gave up"))
        if action == "admin_load":
            broken = httpx.post(f"{gw.base}/admin/models/m/load", timeout=120)
            assert broken.status_code == 503, broken.text  # the file is still truncated: why, not a 400
            tiny.write_bytes(good)
            r = httpx.post(f"{gw.base}/admin/models/m/load", timeout=120)
            assert r.status_code == 200 and r.json()["state"] == "ready", r.text
        else:
            tiny.write_bytes(good)
            r = httpx.post(f"{gw.base}/admin/reload", timeout=120)
            assert r.status_code == 200, r.text
            assert (r.json()["restarted"], r.json()["unchanged"]) == (["m"], [])
        assert _state(gw.base, "m")["state"] == "ready"
        assert _ask(gw.base, "m") == 200
