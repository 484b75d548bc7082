"""The operator's commands (`gateway status`, `ps`, `load`, `unload`, `restart`, `logs`) against a
real `gateway serve`: tiny models on the CPU, one eager and one on demand. The gateway and the
commands both take the port from GATEWAY_PORT, as an operator's shell would have it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gateway.cli.main import main
from testkit.ggufmaker import write_tiny_llama
from testkit.serving import free_port, kill_group, spawn, wait_until_answering

pytestmark = pytest.mark.llama

KEY = "operator-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("operator")
    tiny = write_tiny_llama(tmp / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
    cfg = tmp / "models.toml"
    cfg.write_text(
        f"""
[gateway]
api_keys = ["{KEY}"]
shutdown_grace_s = 1

[[models]]
name = "tiny"
path = "{tiny}"
n_ctx = 256
max_concurrency = 2

[[models]]
name = "od"
path = "{tiny}"
n_ctx = 128
load = "on_demand"
idle_ttl_s = 600
"""
    )
    port = free_port()
    log = tmp / "server.log"
    proc = spawn(["serve", "--config", str(cfg)], log, env={"GATEWAY_PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(base, proc, log, timeout=120)
        yield {"base": base, "port": port, "config": cfg}
    finally:
        kill_group(proc)


@pytest.fixture
def shell(monkeypatch, gateway):
    """The operator's environment: the gateway's port and key, nothing else of GATEWAY_*."""
    for name in ("GATEWAY_HOST", "GATEWAY_URL", "GATEWAY_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GATEWAY_PORT", str(gateway["port"]))
    monkeypatch.setenv("GATEWAY_API_KEY", KEY)
    return monkeypatch


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def model(gateway, name: str) -> dict:
    models = httpx.get(gateway["base"] + "/v1/models", headers=AUTH, timeout=10).json()["data"]
    return next(m for m in models if m["id"] == name)


def ps_rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.splitlines()[1:]}


def test_status_finds_the_gateway_by_gateway_port(shell, capsys):
    code, out, err = run(capsys, "status")
    assert code == 0, err
    assert out.splitlines()[0] == "tiny: ready"


def test_url_takes_a_bare_host_and_port(shell, gateway, capsys):
    shell.delenv("GATEWAY_PORT")
    code, out, err = run(capsys, "status", "--url", f"127.0.0.1:{gateway['port']}")
    assert code == 0, err
    assert "tiny: ready" in out


def test_config_gives_the_address_serve_listens_on(shell, gateway, capsys):
    code, out, err = run(capsys, "ps", "--config", str(gateway["config"]))  # GATEWAY_PORT over the file, as for serve
    assert code == 0, err
    assert ps_rows(out)["tiny"][1] == "ready"


def test_without_the_key_a_command_says_the_gateway_wants_one(shell, capsys):
    shell.delenv("GATEWAY_API_KEY")
    code, out, err = run(capsys, "ps")
    assert code == 1 and out == ""
    assert err.startswith("error: http://127.0.0.1:") and "HTTP 401" in err
    code, _, err = run(capsys, "ps", "--api-key", KEY)
    assert code == 0, err


def test_ps_shows_each_models_state_memory_context_slots_and_idle_time_left(shell, capsys):
    assert run(capsys, "load", "od")[0] == 0
    code, out, err = run(capsys, "ps")
    assert code == 0, err
    assert out.splitlines()[0].split()[:4] == ["NAME", "STATE", "GPU", "MEMORY"]
    rows = ps_rows(out)
    # No GPU here: each model is planned on the CPU, its memory in host memory.
    assert rows["tiny"][:4] == ["tiny", "ready", "CPU", "only"] and rows["tiny"][5] == "MiB"
    assert rows["tiny"][6:] == ["256", "0/2", "0/16", "-"]
    assert rows["od"][1] == "ready" and rows["od"][6] == "128"
    assert rows["od"][-1].startswith(("9m", "10m"))  # idle_ttl_s = 600, counting down
    assert run(capsys, "unload", "od")[1] == "od: stopped\n"
    assert ps_rows(run(capsys, "ps")[1])["od"][1:3] == ["stopped", "-"]


def test_an_unloaded_eager_model_stays_down_until_gateway_load(shell, gateway, capsys):
    code, out, err = run(capsys, "unload", "tiny")
    assert code == 0, err
    assert out.startswith("tiny: stopped (unloaded by an operator")
    refused = httpx.post(gateway["base"] + "/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 1}, headers=AUTH)
    assert refused.status_code == 503
    assert model(gateway, "tiny")["state"] == "stopped"
    code, out, err = run(capsys, "load", "tiny")
    assert code == 0, err
    assert out.startswith("tiny: ready (loaded in ")
    answered = httpx.post(gateway["base"] + "/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 1}, headers=AUTH, timeout=60)
    assert answered.status_code == 200, answered.text


def test_restart_gives_the_model_a_new_worker(shell, gateway, capsys):
    before = model(gateway, "tiny")["pid"]
    code, out, err = run(capsys, "restart", "tiny")
    assert code == 0, err
    assert out.startswith("tiny: ready (loaded in ")
    after = model(gateway, "tiny")["pid"]
    assert after is not None and after != before


def test_logs_show_the_workers_recent_stderr(shell, gateway, capsys):
    code, out, err = run(capsys, "logs", "tiny")
    assert code == 0, err
    head, *lines = out.splitlines()
    assert head.startswith(f"# tiny: ready, pid {model(gateway, 'tiny')['pid']}; ")
    assert any("llama" in line for line in lines), out  # llama.cpp's own log of the load
    assert len(run(capsys, "logs", "tiny", "-n", "3")[1].splitlines()) == 4


def test_an_unknown_model_is_one_line_listing_the_known_ones(shell, capsys):
    code, out, err = run(capsys, "load", "nope")
    assert code == 1 and out == ""
    assert "HTTP 404" in err and "tiny" in err
