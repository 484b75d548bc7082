"""API keys on the real gateway (`gateway serve` -> granian -> workers running llama.cpp), with
the official openai client: keys from a keys file, scopes, limits, metrics, status and reload.

Two tiny models written by the tests and the real Gemma 3 270M (slow enough on the CPU that a
stream is still running when the next request arrives). Each test uses keys of its own, so the
order of the tests does not matter except for the reload, which runs last.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai
import pytest
import tomli_w

from gateway.config.keys import key_digest
from testkit.ggufmaker import write_tiny_llama
from testkit.serving import clean_env, free_port, running_gateway, wait_until

pytestmark = pytest.mark.llama

FORCE = {"logit_bias": {"97": 50}}  # the tiny model then writes "a" after "a" (no early end)
KEYS = {
    "app": {"models": ["chat", "ot*"]},
    "rate": {"models": ["chat"], "requests_per_minute": 3},
    "budget": {"models": ["chat"], "tokens_per_minute": 20},
    "solo": {"models": ["gemma"], "max_concurrency": 1},
    "admin": {"admin": True},
}


def write_keys(path, keys: dict[str, dict]) -> None:
    path.write_text(tomli_w.dumps({"keys": [{"name": n, "key_sha256": key_digest(f"sk-{n}"), **f} for n, f in keys.items()]}))


@pytest.fixture(scope="module")
def server(tmp_path_factory, gemma_path):
    tmp = tmp_path_factory.mktemp("keys")
    tiny = write_tiny_llama(tmp / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
    port = free_port()
    write_keys(tmp / "keys.toml", KEYS)
    cfg = tmp / "models.toml"
    cfg.write_text(tomli_w.dumps({
        "gateway": {"port": port, "log_format": "json", "keys_file": "keys.toml", "request_timeout_s": 30, "shutdown_grace_s": 10},
        "models": [
            {"name": "chat", "path": str(tiny), "n_ctx": 256},
            {"name": "other", "path": str(tiny), "n_ctx": 256},
            {"name": "gemma", "path": str(gemma_path), "n_ctx": 512, "flash_attn": True},
        ],
    }))
    with running_gateway(cfg, port, tmp / "serve.log") as gw:
        yield {"base": gw.base, "keys": tmp / "keys.toml", "log": gw.log, "proc": gw.proc}


def client(server, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key=f"sk-{name}", max_retries=0, timeout=60)


def in_flight(server, name: str) -> int:
    doc = httpx.get(server["base"] + "/admin/keys", headers={"Authorization": "Bearer sk-admin"}, timeout=5).json()
    return next(k["in_flight"] for k in doc["data"] if k["name"] == name)


def test_a_key_sees_and_uses_only_its_models(server):
    app = client(server, "app")
    assert sorted(m.id for m in app.models.list()) == ["chat", "other"]
    assert app.completions.create(model="chat", prompt="a", max_tokens=3, extra_body=FORCE).choices[0].text
    assert app.completions.create(model="other", prompt="a", max_tokens=3, extra_body=FORCE).choices[0].text
    for model in ("gemma", "gemma-3-270m"):  # a model outside the scope, and a name nobody has
        with pytest.raises(openai.PermissionDeniedError) as info:
            app.completions.create(model=model, prompt="a", max_tokens=3)
        assert info.value.body["code"] == "permission_denied"
        assert info.value.body["message"] == f"key 'app' may not use model {model!r}; its models: chat, other"
    with pytest.raises(openai.PermissionDeniedError):
        app.models.retrieve("gemma")
    with pytest.raises(openai.AuthenticationError):
        client(server, "nobody").models.list()


def test_requests_per_minute_answers_429_with_retry_after_and_openai_headers(server):
    rate = client(server, "rate")
    for expected in ("2", "1", "0"):
        raw = rate.completions.with_raw_response.create(model="chat", prompt="a", max_tokens=2, extra_body=FORCE)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-remaining-requests"] == expected
    with pytest.raises(openai.RateLimitError) as info:
        rate.completions.create(model="chat", prompt="a", max_tokens=2)
    headers = info.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert info.value.body["code"] == "rate"


def test_a_stream_stops_at_the_keys_token_budget_with_finish_reason_length_and_a_note(server):
    budget = client(server, "budget")
    stream = budget.completions.create(
        model="chat", prompt="a", max_tokens=200, stream=True, stream_options={"include_usage": True}, extra_body=FORCE
    )
    chunks = list(stream)
    text_chunks = [c for c in chunks if c.choices and c.choices[0].text]
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert 0 < len(text_chunks) <= 20
    assert [c.choices[0].finish_reason for c in finish] == ["length"]
    assert "key 'budget' reached its tokens_per_minute (20)" in finish[0].model_extra["note"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(text_chunks)
    usage = chunks[-1].usage
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    with pytest.raises(openai.RateLimitError) as info:
        budget.completions.create(model="chat", prompt="a", max_tokens=2)
    assert info.value.response.headers["x-ratelimit-remaining-tokens"] == "0"


def test_max_concurrency_refuses_a_second_request_while_the_first_streams(server):
    solo = client(server, "solo")
    stream = solo.completions.create(model="gemma", prompt="Once upon a time", max_tokens=400, stream=True)
    first = next(iter(stream))
    assert first.choices
    with pytest.raises(openai.RateLimitError) as info:
        solo.completions.create(model="gemma", prompt="Hi", max_tokens=2)
    assert info.value.body["code"] == "concurrency"
    assert info.value.response.headers["retry-after"] == "1"
    stream.close()  # the client goes away: the generation stops and the key's place is free again
    wait_until(lambda: in_flight(server, "solo") == 0)
    assert solo.completions.create(model="gemma", prompt="Hi", max_tokens=2).choices


def test_metrics_and_the_json_request_log_name_the_key_never_the_key_itself(server):
    app = client(server, "app")
    app.completions.create(model="chat", prompt="a", max_tokens=3, extra_body=FORCE)
    with pytest.raises(openai.PermissionDeniedError):
        app.completions.create(model="gemma", prompt="a", max_tokens=3)
    text = httpx.get(server["base"] + "/metrics", timeout=10).text
    series = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vram_gateway_key_")}
    assert series['vram_gateway_key_requests_total{key="app",status="200"}'] >= 1
    assert series['vram_gateway_key_requests_rejected_total{key="app",reason="scope"}'] >= 1
    assert series['vram_gateway_key_completion_tokens_total{key="app"}'] >= 3
    assert series['vram_gateway_key_requests_rejected_total{key="budget",reason="rate"}'] >= 0
    for name in KEYS:
        assert f"sk-{name}" not in text and key_digest(f"sk-{name}") not in text
    wait_until(lambda: '"key": "app"' in server["log"].read_text(errors="replace"))
    lines = [json.loads(l) for l in server["log"].read_text(errors="replace").splitlines() if l.startswith("{") and '"event": "request"' in l]
    assert {(l["key"], l["status"]) for l in lines if l.get("key") == "app"} >= {("app", 200), ("app", 403)}
    assert "sk-app" not in server["log"].read_text(errors="replace")


def test_gateway_status_shows_each_keys_last_minute(server):
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", "--url", server["base"], "--api-key", "sk-admin"],
        capture_output=True, text=True, env=clean_env(), timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.split() and line.split()[0] in KEYS}
    assert set(rows) == set(KEYS)
    assert rows["rate"][0] == "3/3"  # requests over the last minute, of its requests_per_minute
    refused = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", "--url", server["base"], "--api-key", "sk-app"],
        capture_output=True, text=True, env=clean_env(), timeout=60,
    )
    assert "per-key usage not shown: key 'app' may not call admin endpoints" in refused.stdout


def test_reload_adds_and_removes_keys_without_dropping_the_request_in_flight(server):
    solo = client(server, "solo")
    stream = solo.completions.create(model="gemma", prompt="Once upon a time", max_tokens=60, stream=True)
    chunks = iter(stream)
    next(chunks)
    keys = {n: f for n, f in KEYS.items() if n != "app"} | {"late": {"models": ["other"]}}
    write_keys(server["keys"], keys)
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "reload", "--url", server["base"], "--api-key", "sk-admin"],
        capture_output=True, text=True, env=clean_env(), timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rest = list(chunks)  # the stream that began before the reload runs to its end
    assert rest and rest[-1].choices[0].finish_reason in ("length", "stop")
    with pytest.raises(openai.AuthenticationError):
        client(server, "app").completions.create(model="chat", prompt="a", max_tokens=2)
    late = client(server, "late")
    assert [m.id for m in late.models.list()] == ["other"]
    assert late.completions.create(model="other", prompt="a", max_tokens=2, extra_body=FORCE).choices
