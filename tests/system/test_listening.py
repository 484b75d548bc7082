"""Where `gateway serve` listens: never beyond loopback without keys unless told so (issue 21,
item 8), and never on a port another server already holds (item 7). Real processes."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from testkit.ggufmaker import write_tiny_llama
from testkit.serving import clean_env, free_port, kill_group, wait_until_answering

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("listening") / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)


def serve(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**clean_env(), **env},
            start_new_session=True,
        )


def config(path: Path, tiny: Path, port: int, name: str) -> Path:
    path.write_text(f'[gateway]\nport = {port}\n\n[[models]]\nname = "{name}"\npath = "{tiny}"\nn_ctx = 256\n')
    return path


def test_without_keys_serving_beyond_loopback_is_refused(tmp_path, tiny):
    port = free_port()
    run = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--model", str(tiny), "--port", str(port), "--n-ctx", "256"],
        capture_output=True, text=True, timeout=120, env={**clean_env(), "GATEWAY_HOST": "0.0.0.0"},
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "error: gateway.host: '0.0.0.0' (listens beyond loopback, and no API key is configured" in run.stderr
    assert "allow_unauthenticated_network = true" in run.stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_allow_unauthenticated_network_serves_the_network_and_says_so(tmp_path, tiny):
    port = free_port()
    log = tmp_path / "serve.log"
    proc = serve(
        ["--model", str(tiny), "--port", str(port), "--n-ctx", "256"], log,
        GATEWAY_HOST="0.0.0.0", GATEWAY_ALLOW_UNAUTHENTICATED_NETWORK="true",
    )
    try:
        assert wait_until_answering(f"http://127.0.0.1:{port}", proc, log) == 200
        assert f"listening on 0.0.0.0:{port} WITHOUT API keys (allow_unauthenticated_network = true)" in log.read_text()
    finally:
        kill_group(proc)


def test_with_keys_serving_beyond_loopback_needs_no_flag(tmp_path, tiny):
    port = free_port()
    log = tmp_path / "serve.log"
    proc = serve(["--model", str(tiny), "--port", str(port), "--n-ctx", "256"], log, GATEWAY_HOST="0.0.0.0", GATEWAY_API_KEYS="k1")
    try:
        assert wait_until_answering(f"http://127.0.0.1:{port}", proc, log) == 200
        assert "WITHOUT API keys" not in log.read_text()
    finally:
        kill_group(proc)


def test_a_second_gateway_on_a_busy_port_exits_with_address_in_use(tmp_path, tiny):
    port = free_port()
    first_log = tmp_path / "first.log"
    first = serve(["--config", str(config(tmp_path / "first.toml", tiny, port, "first"))], first_log)
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_until_answering(base, first, first_log) == 200
        second = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config(tmp_path / "second.toml", tiny, port, "second"))],
            capture_output=True, text=True, timeout=120, env=clean_env(), start_new_session=True,
        )
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"error: cannot listen on 127.0.0.1:{port}: address in use" in second.stderr
        # Every request still reaches the first gateway.
        for _ in range(20):
            with httpx.Client(timeout=5) as fresh:  # a new connection each time
                assert [m["id"] for m in fresh.get(base + "/v1/models").json()["data"]] == ["first"]
    finally:
        kill_group(first)


def test_a_port_held_by_another_program_is_refused_too(tmp_path, tiny):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "serve", "--model", str(tiny), "--port", str(port), "--n-ctx", "256"],
            capture_output=True, text=True, timeout=120, env=clean_env(), start_new_session=True,
        )
    assert run.returncode == 1 and f"cannot listen on 127.0.0.1:{port}: address in use" in run.stderr
