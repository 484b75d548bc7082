"""Bad requests get 4xx in OpenAI's error shape, never a 5xx, and leave the worker serving."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.ggufmaker import write_tiny_llama

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    tiny = write_tiny_llama(tmp / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp / "models.toml"
    cfg.write_text(f'[gateway]\nport = {port}\nmax_body_bytes = 4096\n\n[[models]]\nname = "tiny"\npath = "{tiny}"\nn_ctx = 256\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg)],
        stdout=open(tmp / "serve.log", "wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    yield url
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _post(base: str, path: str, **kw) -> httpx.Response:
    return httpx.post(base + path, timeout=30, **kw)


def _error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_malformed_json_is_400(base):
    r = _post(base, "/v1/chat/completions", content=b'{"messages": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert _error(r)["message"].startswith("the request body is not valid JSON")


@pytest.mark.parametrize(
    "body,param",
    [
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, "max_tokens"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
        ({"messages": [{"role": "user", "content": "hi"}], "model": 7}, "model"),
    ],
)
def test_wrong_types_are_400_naming_the_field(base, body, param):
    r = _post(base, "/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert _error(r)["param"] == param


def test_body_over_the_limit_is_413(base):
    r = _post(base, "/v1/completions", json={"prompt": "a" * 10_000})
    assert r.status_code == 413
    assert _error(r)["type"] == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_the_context_is_400_with_token_counts(base, stream):
    r = _post(base, "/v1/completions", json={"prompt": "hello " * 200, "max_tokens": 4, "stream": stream})
    assert r.status_code == 400
    message = _error(r)["message"]
    assert "exceed context window of 256" in message


def test_unknown_fields_are_ignored_like_openai(base):
    r = _post(base, "/v1/completions", json={"prompt": "a", "max_tokens": 2, "logit_bias": {"97": 50}, "frobnicate": True})
    assert r.status_code == 200


def test_unknown_route_is_404_in_openai_shape(base):
    r = httpx.get(base + "/v1/nothing", timeout=5)
    assert r.status_code == 404
    assert _error(r)["type"] == "invalid_request_error"


def test_the_worker_still_serves_after_all_that(base):
    r = _post(base, "/v1/completions", json={"prompt": "a", "max_tokens": 2, "logit_bias": {"97": 50}})
    assert r.status_code == 200
