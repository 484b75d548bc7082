"""The client commands' address and views (gateway.cli.client, gateway.cli.render); the commands
against a real gateway are in tests/system/test_operator_cli.py."""

from __future__ import annotations

import pytest

from gateway.cli.client import gateway_url
from gateway.cli.main import main
from gateway.cli.render import logs_text, ps_text
from gateway.errors import ConfigError, GatewayError


def test_without_url_the_address_is_where_serve_listens_with_gateway_port():
    assert gateway_url(None, None, environ={}) == "http://127.0.0.1:8080"
    assert gateway_url(None, None, environ={"GATEWAY_PORT": "18480"}) == "http://127.0.0.1:18480"
    assert gateway_url(None, None, environ={"GATEWAY_HOST": "::", "GATEWAY_PORT": "9"}) == "http://[::1]:9"


def test_the_address_comes_from_the_config_serve_reads_with_gateway_variables_over_it(tmp_path):
    cfg = tmp_path / "models.toml"
    cfg.write_text('[gateway]\nhost = "0.0.0.0"\nport = 9001\n\n[[models]]\nname = "m"\npath = "absent.gguf"\n')
    assert gateway_url(None, cfg, environ={}) == "http://127.0.0.1:9001"
    assert gateway_url(None, cfg, environ={"GATEWAY_PORT": "9002"}) == "http://127.0.0.1:9002"
    assert gateway_url("localhost", cfg, environ={}) == "http://localhost:9001"  # a bare host: the configured port


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("127.0.0.1:18480", "http://127.0.0.1:18480"),
        ("http://127.0.0.1:18480/", "http://127.0.0.1:18480"),
        ("https://gw.example:8443/prefix/", "https://gw.example:8443/prefix"),
        ("[::1]:9000", "http://[::1]:9000"),
        ("gw.example", "http://gw.example:8080"),
        ("http://gw.example", "http://gw.example:80"),
        ("0.0.0.0:7000", "http://127.0.0.1:7000"),
    ],
)
def test_url_takes_a_bare_host_and_port(given, url):
    assert gateway_url(given, None, environ={}) == url


@pytest.mark.parametrize("given", ["ftp://h:1", "h:port", "h:99999", "", "http://:80", "h:1?x=1"])
def test_a_malformed_url_names_the_flag_and_the_forms_allowed(given):
    with pytest.raises(GatewayError, match=r"--url: .* \(must be http://HOST:PORT, https://HOST:PORT, HOST:PORT or HOST\)"):
        gateway_url(given, None, environ={})


def test_a_bad_gateway_port_variable_is_named_as_serve_names_it():
    with pytest.raises(ConfigError) as exc:
        gateway_url(None, None, environ={"GATEWAY_PORT": "http"})
    assert exc.value.problems[0].startswith("gateway.port (from GATEWAY_PORT): ")


def test_an_unreachable_gateway_is_one_line_naming_the_address(capsys, monkeypatch):
    monkeypatch.setenv("GATEWAY_PORT", "1")  # nothing listens on port 1
    assert main(["ps"]) == 1
    assert capsys.readouterr().err.startswith("error: http://127.0.0.1:1: cannot reach the gateway")


MODELS = {
    "data": [
        {
            "id": "gemma",
            "state": "ready",
            "n_ctx": 4096,
            "planned": {"devices": [{"gpu": 0, "total_bytes": 700 * 2**20}, {"gpu": 2, "total_bytes": 300 * 2**20}], "host_bytes": 200 * 2**20},
            "gpu_used_bytes": {"2": 310 * 2**20},
            "queue": {"running": 1, "waiting": 0, "max_concurrency": 4, "queue_size": 16},
            "unload_in_s": 299.6,
        },
        {"id": "od", "state": "stopped", "n_ctx": 512, "planned": None, "gpu_used_bytes": {}, "queue": {"running": 0, "waiting": 0, "max_concurrency": 1, "queue_size": 8}, "unload_in_s": None},
        {"id": "cpu", "state": "starting", "progress": 40, "n_ctx": 256, "planned": {"devices": [], "host_bytes": 50 * 2**20}, "queue": {"running": 0, "waiting": 2, "max_concurrency": 1, "queue_size": 8}},
    ]
}


def test_ps_shows_state_memory_per_gpu_and_host_context_slots_and_idle_time_left():
    lines = ps_text(MODELS).splitlines()
    assert lines[0].split() == ["NAME", "STATE", "GPU", "MEMORY", "HOST", "MEMORY", "CONTEXT", "SLOTS", "BUSY", "WAITING", "UNLOADS", "IN"]
    assert lines[1].split() == ["gemma", "ready", "GPU", "0", "700", "MiB,", "GPU", "2", "310", "MiB", "200", "MiB", "4,096", "1/4", "0/16", "5m00s"]
    assert lines[2].split() == ["od", "stopped", "-", "-", "512", "0/1", "0/8", "-"]
    assert lines[3].split() == ["cpu", "starting", "40%", "CPU", "only", "50", "MiB", "256", "0/1", "2/8", "-"]


def test_logs_show_the_last_lines_asked_for():
    doc = {"id": "m", "state": "ready", "pid": 7, "lines": ["a", "b", "c"]}
    assert logs_text(doc, 2).splitlines() == ["# m: ready, pid 7; 2 line(s) of its worker's stderr", "b", "c"]
    assert logs_text({**doc, "pid": None, "lines": []}).splitlines() == ["# m: ready, no worker process; 0 line(s) of its worker's stderr"]
