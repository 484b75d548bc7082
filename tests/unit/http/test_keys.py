"""API keys with scopes and limits, through the official openai client against the in-process app
(fake workers; the keys' clock is injected, so no test waits for a minute to pass)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path

import openai
import pytest
import tomli_w
from litestar.connection import ASGIConnection
from litestar.testing import TestClient

from gateway.access.keyring import KeyRing
from gateway.cli.render import keys_text
from gateway.config.keys import KeyConfig, key_digest
from gateway.config.loading import load_config
from gateway.config.schema import GatewaySettings
from gateway.http.app import create_app
from gateway.http.auth import RELOAD_TOKEN_HEADER, Auth
from gateway.observability.logs import JsonFormatter
from gateway.runtime.fake import FakeScript, FakeTransport
from testkit.ggufmaker import write_tiny_llama
from tests.unit.http.apps import BASE_URL

TOKEN = "reload-token"
KEYS = {
    "ci": {"models": ["a"], "requests_per_minute": 3},
    "tok": {"models": ["a*"], "tokens_per_minute": 10},
    "one": {"max_concurrency": 1},
    "ops": {"admin": True},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("keys") / "tiny.gguf", n_layers=2, n_embd=64, ctx=4096)


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def write_config(path: Path, tiny: Path, keys: dict[str, dict], **gateway) -> Path:
    doc = {
        "gateway": {"shutdown_grace_s": 2, **gateway},
        "planner": {"gpus": ["8GiB"], "reserve_mib": 0, "min_budget_mib": 0},
        "models": [
            {"name": "a", "path": str(tiny), "n_ctx": 256},
            {"name": "b", "path": str(tiny), "n_ctx": 256, "aliases": ["bee"]},
        ],
        "keys": [{"name": name, "key_sha256": key_digest(f"sk-{name}"), **fields} for name, fields in keys.items()],
    }
    path.write_text(tomli_w.dumps(doc))
    return path


@pytest.fixture()
def gateway(tmp_path, tiny):
    """(TestClient, clock, config path) for an app with KEYS, on fake workers of 6 tokens."""
    cfg = write_config(tmp_path / "models.toml", tiny, KEYS)
    clock = Clock()
    script = FakeScript(tokens=6)
    app = create_app(load_config(cfg, environ={}), config_path=cfg, reload_token=TOKEN, transport=FakeTransport(script), key_clock=clock)
    with TestClient(app, base_url=BASE_URL) as client:
        yield client, clock, cfg, script


def oai(client: TestClient, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=f"sk-{name}", http_client=client, max_retries=0)


def metric_lines(client: TestClient, prefix: str) -> list[str]:
    return [line for line in client.get("/metrics").text.splitlines() if line.startswith(prefix)]


def test_a_key_lists_and_uses_only_the_models_in_its_scope(gateway):
    client, *_ = gateway
    ci = oai(client, "ci")
    assert [m.id for m in ci.models.list()] == ["a"]
    assert ci.models.retrieve("a").id == "a"
    assert ci.completions.create(model="a", prompt="x").choices[0].text == "w0 w1 w2 w3 w4 w5"
    # Outside the scope is 403, by name, by alias, and for a name that does not exist: the
    # answer is the same, so it tells nothing about models the key may not use.
    for model in ("b", "bee", "no-such-model"):
        with pytest.raises(openai.PermissionDeniedError) as info:
            ci.completions.create(model=model, prompt="x")
        assert info.value.body == {
            "message": f"key 'ci' may not use model {model!r}; its models: a",
            "type": "permission_denied",
            "param": None,
            "code": "permission_denied",
        }
    with pytest.raises(openai.PermissionDeniedError):
        ci.models.retrieve("b")
    # An unscoped key sees and uses every model; an unknown name is still a 404 for it.
    ops = oai(client, "ops")
    assert [m.id for m in ops.models.list()] == ["a", "b"]
    assert ops.completions.create(model="bee", prompt="x").model == "b"
    with pytest.raises(openai.NotFoundError):
        ops.completions.create(model="no-such-model", prompt="x")


def test_a_wrong_key_is_401_and_no_key_is_401(gateway):
    client, *_ = gateway
    with pytest.raises(openai.AuthenticationError):
        oai(client, "nobody").models.list()
    assert client.get("/v1/models").status_code == 401


def test_requests_per_minute_answers_429_with_retry_after_and_the_ratelimit_headers(gateway):
    client, clock, *_ = gateway
    ci = oai(client, "ci")
    remaining = []
    for _ in range(3):
        raw = ci.completions.with_raw_response.create(model="a", prompt="x")
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        clock.now += 5
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as info:
        ci.completions.create(model="a", prompt="x")
    headers = info.value.response.headers
    # The first request leaves the minute 60 s after it came, 15 s ago.
    assert headers["retry-after"] == "45"
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("3", "0")
    assert headers["x-ratelimit-reset-requests"] == "55s"
    assert info.value.body["code"] == "rate"
    clock.now += 45
    assert ci.completions.create(model="a", prompt="x").choices


def test_tokens_per_minute_counts_prompt_and_completion_tokens(gateway):
    client, clock, *_ = gateway
    tok = oai(client, "tok")
    first = tok.completions.with_raw_response.create(model="a", prompt="x")  # 1 + 6 tokens
    assert (first.headers["x-ratelimit-limit-tokens"], first.headers["x-ratelimit-remaining-tokens"]) == ("10", "3")
    tok.completions.create(model="a", prompt="x")  # admitted with 3 left; 14 used now
    with pytest.raises(openai.RateLimitError) as info:
        tok.completions.create(model="a", prompt="x")
    assert info.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert info.value.response.headers["retry-after"] == "60"
    assert "tokens_per_minute (10)" in info.value.body["message"]
    clock.now += 60
    assert tok.completions.create(model="a", prompt="x").choices


def test_a_stream_is_stopped_by_its_token_budget_with_finish_reason_length_a_note_and_whole_usage(gateway):
    client, *_ = gateway
    tok = oai(client, "tok")
    tok.completions.create(model="a", prompt="x", max_tokens=6)  # 7 of 10 tokens used: 3 left
    chunks = list(tok.completions.create(model="a", prompt="x", stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert texts == ["w0 ", "w1 ", "w2 "]
    stop = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert stop.choices[0].finish_reason == "length"
    assert "key 'tok' reached its tokens_per_minute (10)" in stop.model_extra["note"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    # The prompt's tokens come from the cancelled worker's end, and count against the budget too.
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.total_tokens) == (1, 4)
    # The budget is spent: the next request waits for the minute to move on.
    with pytest.raises(openai.RateLimitError):
        tok.completions.create(model="a", prompt="x", stream=True)


def _in_flight(client: TestClient, name: str) -> int:
    keys = client.get("/admin/keys", headers={"Authorization": "Bearer sk-ops"}).json()["data"]
    return next(k["in_flight"] for k in keys if k["name"] == name)


def _wait_until(condition, timeout: float = 120.0) -> None:  # the timeout only guards against a hang
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def test_max_concurrency_counts_the_keys_requests_across_models(gateway):
    client, _, _, script = gateway
    script.hold_answer = threading.Event()  # the first request runs until the test lets it end
    one = oai(client, "one")
    results: list = []
    running = threading.Thread(target=lambda: results.append(one.completions.create(model="a", prompt="x")))
    running.start()
    try:
        _wait_until(lambda: _in_flight(client, "one") == 1)
        with pytest.raises(openai.RateLimitError) as info:
            one.completions.create(model="b", prompt="x")  # another model: the same key's limit
    finally:
        script.hold_answer.set()
        running.join()
    script.hold_answer = None
    assert info.value.body["code"] == "concurrency"
    assert info.value.response.headers["retry-after"] == "1"
    assert results and results[0].choices
    assert one.completions.create(model="b", prompt="x").choices


def test_a_reload_adds_and_removes_keys_while_requests_run(gateway, tiny):
    client, _, cfg, script = gateway
    script.token_s = 0.02
    statuses: Counter = Counter()
    stop = threading.Event()

    def traffic() -> None:  # a key that stays, throughout the reload
        ops = oai(client, "ops")
        while not stop.is_set():
            try:
                ops.completions.create(model="a", prompt="x")
                statuses[200] += 1
            except openai.APIStatusError as exc:
                statuses[exc.status_code] += 1

    in_flight: list = []
    slow = threading.Thread(target=lambda: in_flight.append(oai(client, "ci").completions.create(model="a", prompt="x")))
    t = threading.Thread(target=traffic)
    t.start()
    slow.start()
    _wait_until(lambda: _in_flight(client, "ci") == 1)
    write_config(cfg, tiny, {"ops": KEYS["ops"], "new": {"models": ["b"]}})
    assert client.post("/admin/reload", headers={RELOAD_TOKEN_HEADER: TOKEN}).status_code == 200
    slow.join()
    stop.set()
    t.join()
    assert in_flight and in_flight[0].choices  # the removed key's request in flight finished
    assert set(statuses) == {200} and statuses[200] > 0
    with pytest.raises(openai.AuthenticationError):
        oai(client, "ci").completions.create(model="a", prompt="x")
    assert [m.id for m in oai(client, "new").models.list()] == ["b"]
    assert oai(client, "new").completions.create(model="bee", prompt="x").choices
    assert [k["name"] for k in client.get("/admin/keys", headers={"Authorization": "Bearer sk-ops"}).json()["data"]] == ["ops", "new"]


def test_metrics_count_requests_tokens_and_refusals_by_key_name_never_the_key(gateway):
    client, *_ = gateway
    ci = oai(client, "ci")
    ci.completions.create(model="a", prompt="x")
    with pytest.raises(openai.PermissionDeniedError):
        ci.completions.create(model="b", prompt="x")
    for _ in range(3):
        try:
            ci.completions.create(model="a", prompt="x")
        except openai.RateLimitError:
            pass
    text = client.get("/metrics").text
    assert 'vram_gateway_key_requests_total{key="ci",status="200"} 3.0' in text
    assert 'vram_gateway_key_requests_total{key="ci",status="403"} 1.0' in text
    assert 'vram_gateway_key_requests_total{key="ci",status="429"} 1.0' in text
    assert 'vram_gateway_key_prompt_tokens_total{key="ci"} 3.0' in text
    assert 'vram_gateway_key_completion_tokens_total{key="ci"} 18.0' in text
    assert 'vram_gateway_key_requests_rejected_total{key="ci",reason="scope"} 1.0' in text
    assert 'vram_gateway_key_requests_rejected_total{key="ci",reason="rate"} 1.0' in text
    assert 'vram_gateway_key_requests_rejected_total{key="ci",reason="concurrency"} 0.0' in text
    # Keys with no traffic yet have their zeroed series; the models' refusals say why too (a
    # scope refusal never reached a model: model="").
    assert 'vram_gateway_key_requests_rejected_total{key="ops",reason="rate"} 0.0' in text
    assert 'vram_gateway_requests_rejected_total{model="",reason="scope"} 1.0' in text
    assert 'vram_gateway_requests_rejected_total{model="a",reason="rate"} 1.0' in text
    for name in KEYS:
        assert f"sk-{name}" not in text and key_digest(f"sk-{name}") not in text


def test_the_json_request_log_line_carries_the_key_name(gateway, caplog):
    client, *_ = gateway
    with caplog.at_level(logging.INFO, logger="gateway.request"):
        oai(client, "ci").completions.create(model="a", prompt="x")
        with pytest.raises(openai.PermissionDeniedError):
            oai(client, "ci").completions.create(model="b", prompt="x")
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "gateway.request"]
    assert [(line["key"], line["model"], line["status"]) for line in lines] == [("ci", "a", 200), ("ci", None, 403)]
    assert "sk-ci" not in json.dumps(lines) and key_digest("sk-ci") not in json.dumps(lines)


def test_only_admin_keys_may_call_admin_endpoints(gateway, tmp_path, tiny):
    client, *_ = gateway
    refused = client.post("/admin/reload", headers={"Authorization": "Bearer sk-ci"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    assert client.get("/admin/keys", headers={"Authorization": "Bearer sk-ci"}).status_code == 403
    assert client.post("/admin/reload", headers={"Authorization": "Bearer sk-ops"}).status_code == 200
    assert 'vram_gateway_key_requests_rejected_total{key="ci",reason="scope"} 2.0' in client.get("/metrics").text


def test_plain_api_keys_keep_working_unscoped_unlimited_and_admin(tmp_path, tiny):
    cfg = write_config(tmp_path / "models.toml", tiny, {"ci": KEYS["ci"]}, api_keys=["plain-key"])
    app = create_app(load_config(cfg, environ={}), config_path=cfg, transport=FakeTransport())
    with TestClient(app, base_url=BASE_URL) as client:
        plain = oai(client, "x")
        plain.api_key = "plain-key"
        assert [m.id for m in plain.models.list()] == ["a", "b"]
        for _ in range(5):
            raw = plain.completions.with_raw_response.create(model="b", prompt="x")
            assert "x-ratelimit-limit-requests" not in raw.headers
        assert client.post("/admin/reload", headers={"Authorization": "Bearer plain-key"}).status_code == 200
        assert 'vram_gateway_key_requests_total{key="api_keys[0]",status="200"} 5.0' in client.get("/metrics").text


def test_admin_keys_shows_each_keys_last_minute_and_status_renders_it(gateway):
    client, clock, *_ = gateway
    ci = oai(client, "ci")
    ci.completions.create(model="a", prompt="x")
    with pytest.raises(openai.PermissionDeniedError):
        ci.completions.create(model="b", prompt="x")
    doc = client.get("/admin/keys", headers={"Authorization": "Bearer sk-ops"}).json()
    usage = {k["name"]: k for k in doc["data"]}
    assert usage["ci"]["last_minute"] == {"requests": 1, "tokens": 7, "rejected": {"scope": 1}}
    assert usage["ci"]["requests_per_minute"] == 3 and usage["ci"]["models"] == ["a"]
    assert key_digest("sk-ci") not in json.dumps(doc)
    text = keys_text(doc["data"])
    assert text.splitlines()[1].split() == ["ci", "1/3", "7", "0", "scope", "1"]
    clock.now += 60
    after = client.get("/admin/keys", headers={"Authorization": "Bearer sk-ops"}).json()["data"]
    assert next(k for k in after if k["name"] == "ci")["last_minute"] == {"requests": 0, "tokens": 0, "rejected": {}}


def test_the_admin_rule_is_one_question_that_other_pages_can_ask():
    """A page (the /ui actions) asks Auth.allows(connection, "admin") rather than deciding itself."""
    ring = KeyRing.build([], [KeyConfig(name="ops", key_sha256=key_digest("sk-ops"), admin=True), KeyConfig(name="ci", key_sha256=key_digest("sk-ci"))])
    auth = Auth(lambda: GatewaySettings(), keyring=lambda: ring)

    def connection(key: str) -> ASGIConnection:
        headers = [(b"authorization", f"Bearer {key}".encode())]
        return ASGIConnection({"type": "http", "headers": headers, "client": ("10.0.0.1", 1), "state": {}, "path": "/", "method": "GET", "query_string": b""})

    assert auth.allows(connection("sk-ops"), "admin")
    assert not auth.allows(connection("sk-ci"), "admin")
    assert auth.allows(connection("sk-ci"), "api")
    assert not auth.allows(connection("sk-wrong"), "api")
