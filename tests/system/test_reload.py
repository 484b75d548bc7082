"""Config reload: `gateway reload` and SIGHUP re-read models.toml; unchanged models serve
throughout, removed ones stop, changed and new ones start, and a bad file changes nothing."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
import tomli_w

from testkit.ggufmaker import write_tiny_llama
from testkit.serving import HANG_S, clean_env, free_port, kill_group, running_gateway, spawn, wait_until, wait_until_answering, worker_start_gate

pytestmark = pytest.mark.llama


def _config(port: int, tiny: Path, models: dict[str, dict]) -> str:
    doc = {
        "gateway": {"port": port, "shutdown_grace_s": 10},
        "models": [{"name": n, "path": str(tiny), "n_ctx": 256, "queue_size": 64, **extra} for n, extra in models.items()],
    }
    return tomli_w.dumps(doc)


@pytest.fixture()
def gateway(tmp_path):
    tiny = write_tiny_llama(tmp_path / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
    port = free_port()
    cfg = tmp_path / "models.toml"
    cfg.write_text(_config(port, tiny, {"keep": {}, "drop": {}, "change": {}}))
    with running_gateway(cfg, port, tmp_path / "serve.log") as gw:
        yield {"base": gw.base, "cfg": cfg, "tiny": tiny, "port": port, "proc": gw.proc, "log": gw.log, "env": clean_env()}


def _pids(base: str) -> dict[str, int | None]:
    return {m["id"]: m["pid"] for m in httpx.get(base + "/v1/models", timeout=5).json()["data"]}


def _ask(base: str, model: str) -> int:
    try:
        return httpx.post(
            base + "/v1/completions",
            json={"model": model, "prompt": "a", "max_tokens": 4, "logit_bias": {"97": 50}},
            timeout=HANG_S,
        ).status_code
    except httpx.TimeoutException:
        return -1  # a hang


def _reload_cli(g) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "reload", "--url", g["base"]],
        capture_output=True,
        text=True,
        env=g["env"],
        timeout=120,
    )


def test_reload_keeps_unchanged_models_serving_and_applies_the_rest(gateway):
    g = gateway
    before = _pids(g["base"])
    statuses: Counter = Counter()
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            statuses[_ask(g["base"], "keep")] += 1

    t = threading.Thread(target=traffic)
    t.start()
    # Traffic runs before, during and after the reload: wait for answers, not for a guessed time.
    wait_until(lambda: sum(statuses.values()) >= 3, what="traffic answered before the reload")
    g["cfg"].write_text(_config(g["port"], g["tiny"], {"keep": {"aliases": ["kept"]}, "change": {"n_ctx": 512}, "new": {}}))
    proc = _reload_cli(g)
    answered_by_reload = sum(statuses.values())
    wait_until(lambda: sum(statuses.values()) >= answered_by_reload + 3, what="traffic answered after the reload")
    stop.set()
    t.join(HANG_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["unchanged: keep", "removed: drop", "changed: change", "added: new"]
    after = _pids(g["base"])
    assert set(after) == {"keep", "change", "new"}
    assert after["keep"] == before["keep"]  # not restarted
    assert after["change"] != before["change"]
    assert set(statuses) == {200}, statuses
    assert _ask(g["base"], "kept") == 200  # the new alias routes at once
    assert _ask(g["base"], "new") == 200
    assert httpx.post(g["base"] + "/v1/completions", json={"model": "drop", "prompt": "a"}, timeout=5).status_code == 404


def test_invalid_file_is_refused_and_nothing_changes(gateway):
    g = gateway
    before = _pids(g["base"])
    g["cfg"].write_text(_config(g["port"], g["tiny"], {"keep": {"n_ctx": -5}}))
    proc = _reload_cli(g)
    assert proc.returncode == 1
    assert "reload refused; the running models are untouched:" in proc.stderr
    assert "models[0].n_ctx: -5 (must be > 0)" in proc.stderr
    assert _pids(g["base"]) == before
    assert _ask(g["base"], "drop") == 200


def test_sighup_reloads_like_gateway_reload(gateway):
    g = gateway
    before = _pids(g["base"])
    g["cfg"].write_text(_config(g["port"], g["tiny"], {"keep": {}, "change": {}}))
    g["proc"].send_signal(signal.SIGHUP)
    wait_until(lambda: "drop" not in _pids(g["base"]), what="SIGHUP removed 'drop'")
    after = _pids(g["base"])
    assert set(after) == {"keep", "change"}
    assert after["keep"] == before["keep"] and after["change"] == before["change"]
    assert g["proc"].poll() is None


def test_gateway_reload_names_the_settings_read_at_start_and_the_gateway_keeps_them(gateway):
    g = gateway
    other = free_port()
    g["cfg"].write_text(_config(other, g["tiny"], {"keep": {}, "drop": {}, "change": {}}))
    proc = _reload_cli(g)
    assert proc.returncode == 0, proc.stderr
    assert f"not applied until a restart: gateway.port: {other} (the gateway runs with {g['port']} until it restarts)" in proc.stderr
    assert proc.stdout.splitlines() == ["unchanged: keep, drop, change", "removed: -", "changed: -", "added: -"]
    assert _ask(g["base"], "keep") == 200  # still where it was bound
    assert f"reload: not applied until the gateway restarts: gateway.port: {other}" in g["log"].read_text(errors="replace")


def test_the_server_process_logs_what_a_sighup_did_in_the_gateways_format(gateway):
    g = gateway
    g["cfg"].write_text(_config(g["port"], g["tiny"], {"keep": {}, "change": {}}))
    g["proc"].send_signal(signal.SIGHUP)
    # The server process forwards the signal and logs the app's answer (it logged nothing at
    # INFO before: logging was set up in the app's process only).
    line = re.compile(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO gateway: SIGHUP: \{"reloaded":true', re.MULTILINE)
    wait_until(lambda: line.search(g["log"].read_text(errors="replace")) is not None, timeout=60, what="the SIGHUP line in the log")


def test_a_sighup_during_start_up_is_kept_and_applied_once_the_app_runs(tmp_path):
    tiny = write_tiny_llama(tmp_path / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
    port = free_port()
    cfg = tmp_path / "models.toml"
    cfg.write_text(_config(port, tiny, {"keep": {}}))
    log = tmp_path / "serve.log"
    # The model's worker waits for the gate before loading, so the app is surely still starting
    # (not answering) when the signal comes, however fast or slow the machine.
    env, gate = worker_start_gate(tmp_path / "gate")
    proc = spawn(["serve", "--config", str(cfg)], log, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        # granian's server process handles signals once it says where it listens.
        wait_until(lambda: "Listening at" in log.read_text(errors="replace") or proc.poll() is not None, what="Listening at")
        assert proc.poll() is None, log.read_text(errors="replace")
        with pytest.raises(httpx.TransportError):
            httpx.get(base + "/health", timeout=2)  # the app is not up yet
        cfg.write_text(_config(port, tiny, {"keep": {}, "late": {}}))
        proc.send_signal(signal.SIGHUP)
        gate.touch()  # only now may the model load and the app start
        wait_until_answering(base, proc, log, timeout=120)
        wait_until(lambda: "late" in _pids(base), what="the kept reload applied")
        assert _ask(base, "late") == 200
        assert "could not reach the app" not in log.read_text(errors="replace")
    finally:
        kill_group(proc)
