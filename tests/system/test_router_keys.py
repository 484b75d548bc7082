"""One key matrix, run against a real node (`gateway serve` with [[keys]]) and against a real
router (`gateway serve --router` with the same [[keys]]) in front of that node: no key, a wrong
key, scopes (names, aliases, unknown names, the default model), requests and tokens per minute,
max_concurrency and the per-key series must answer the same through both.

The node takes the router's internal key as a plain key too, so one node serves both columns;
the keys' counters are per process, so each column starts from zero.
"""

from __future__ import annotations

import httpx
import openai
import pytest
import tomli_w

from gateway.config.keys import key_digest
from testkit.ggufmaker import write_tiny_llama
from testkit.serving import free_port, kill_group, spawn, wait_until_answering

pytestmark = pytest.mark.llama

INTERNAL_KEY = "internal-key"
FORCE = {"logit_bias": {"97": 50}}  # the tiny model then writes "a" after "a" (no early end)
KEYS = {
    "app": {"models": ["chat"]},
    "rate": {"models": ["chat"], "requests_per_minute": 3},
    "budget": {"models": ["chat"], "tokens_per_minute": 20},
    "solo": {"models": ["gemma"], "max_concurrency": 1},
    "short": {"models": ["chat"], "tokens_per_minute": 4},
}
KEY_TABLES = [{"name": n, "key_sha256": key_digest(f"sk-{n}"), **f} for n, f in KEYS.items()]


@pytest.fixture(scope="module")
def servers(tmp_path_factory, gemma_path):
    tmp = tmp_path_factory.mktemp("router-keys")
    tiny = write_tiny_llama(tmp / "tiny.gguf", n_layers=2, n_embd=64, ctx=512)
    models = [
        {"name": "chat", "path": str(tiny), "n_ctx": 256},
        {"name": "other", "path": str(tiny), "n_ctx": 256, "aliases": ["oth"]},
        {"name": "gemma", "path": str(gemma_path), "n_ctx": 512, "flash_attn": True},
    ]
    node_port, router_port = free_port(), free_port()
    procs = {}
    try:
        node_cfg = tmp / "node.toml"
        node_cfg.write_text(tomli_w.dumps({
            "gateway": {"port": node_port, "api_keys": [INTERNAL_KEY], "default_model": "other", "request_timeout_s": 30},
            "models": models,
            "keys": KEY_TABLES,
        }))
        procs["node"] = spawn(["serve", "--config", str(node_cfg)], tmp / "node.log")
        node = f"http://127.0.0.1:{node_port}"
        wait_until_answering(node, procs["node"], tmp / "node.log", timeout=120)
        router_cfg = tmp / "cluster.toml"
        router_cfg.write_text(tomli_w.dumps({
            "gateway": {"port": router_port, "internal_api_key": INTERNAL_KEY, "default_model": "other"},
            "router": {"poll_interval_s": 0.2, "poll_timeout_s": 1.0},
            "nodes": [{"name": "node", "gpus": ["2GiB"], "url": node}],
            "models": [{"name": m["name"], "path": m["path"], **({"aliases": m["aliases"]} if "aliases" in m else {})} for m in models],
            "keys": KEY_TABLES,
        }))
        procs["router"] = spawn(["serve", "--router", str(router_cfg)], tmp / "router.log")
        router = f"http://127.0.0.1:{router_port}"
        wait_until_answering(router, procs["router"], tmp / "router.log", timeout=60)
        yield {"node": node, "router": router}
    finally:
        for proc in procs.values():
            kill_group(proc)


@pytest.fixture(params=["node", "router"])
def base(request, servers) -> str:
    return servers[request.param]


def client(base: str, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=f"sk-{name}", max_retries=0, timeout=60)


def test_no_key_and_a_wrong_key_are_401(base):
    body = {"model": "chat", "prompt": "a", "max_tokens": 2}
    assert httpx.post(base + "/v1/completions", json=body, timeout=30).status_code == 401
    wrong = httpx.post(base + "/v1/completions", json=body, headers={"Authorization": "Bearer sk-nobody"}, timeout=30)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(base + "/v1/models", timeout=30).status_code == 401


def test_a_scoped_key_sees_and_uses_only_its_models(base):
    app = client(base, "app")
    assert [m.id for m in app.models.list()] == ["chat"]
    assert app.completions.create(model="chat", prompt="a", max_tokens=3, extra_body=FORCE).choices[0].text
    for model in ("other", "oth", "gemma", "nope"):
        with pytest.raises(openai.PermissionDeniedError) as info:
            app.completions.create(model=model, prompt="a", max_tokens=3)
        assert info.value.body["message"] == f"key 'app' may not use model {model!r}; its models: chat"
    with pytest.raises(openai.PermissionDeniedError) as info:
        app.completions.create(model="", prompt="a", max_tokens=3)
    assert info.value.body["message"] == "key 'app' may not use the default model; its models: chat"
    with pytest.raises(openai.PermissionDeniedError):
        app.models.retrieve("other")


def test_requests_per_minute_is_429_with_retry_after_and_openai_headers(base):
    rate = client(base, "rate")
    for left in ("2", "1", "0"):
        raw = rate.completions.with_raw_response.create(model="chat", prompt="a", max_tokens=2, extra_body=FORCE)
        assert (raw.headers["x-ratelimit-limit-requests"], raw.headers["x-ratelimit-remaining-requests"]) == ("3", left)
    with pytest.raises(openai.RateLimitError) as info:
        rate.completions.create(model="chat", prompt="a", max_tokens=2)
    assert info.value.body["code"] == "rate" and 1 <= int(info.value.response.headers["retry-after"]) <= 60


def test_a_stream_stops_at_the_token_budget_and_the_next_request_is_429(base):
    budget = client(base, "budget")
    chunks = list(budget.completions.create(
        model="chat", prompt="a", max_tokens=200, stream=True, stream_options={"include_usage": True}, extra_body=FORCE
    ))
    texts = [c for c in chunks if c.choices and c.choices[0].text]
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert 0 < len(texts) <= 20
    assert [c.choices[0].finish_reason for c in finish] == ["length"]
    assert "key 'budget' reached its tokens_per_minute (20)" in finish[0].model_extra["note"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(texts)
    with pytest.raises(openai.RateLimitError) as info:
        budget.completions.create(model="chat", prompt="a", max_tokens=2)
    assert info.value.response.headers["x-ratelimit-remaining-tokens"] == "0"


def test_max_concurrency_refuses_a_second_request_while_the_first_streams(base):
    solo = client(base, "solo")
    stream = solo.completions.create(model="gemma", prompt="Once upon a time", max_tokens=400, stream=True)
    assert next(iter(stream)).choices
    with pytest.raises(openai.RateLimitError) as info:
        solo.completions.create(model="gemma", prompt="Hi", max_tokens=2)
    assert info.value.body["code"] == "concurrency"
    stream.close()


def test_per_key_series_count_answers_tokens_and_refusals(base):
    app = client(base, "app")
    app.completions.create(model="chat", prompt="a", max_tokens=3, extra_body=FORCE)
    with pytest.raises(openai.PermissionDeniedError):
        app.completions.create(model="other", prompt="a", max_tokens=3)
    text = httpx.get(base + "/metrics", timeout=10).text
    series = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vram_gateway_key_")}
    assert series['vram_gateway_key_requests_total{key="app",status="200"}'] >= 1
    assert series['vram_gateway_key_requests_total{key="app",status="403"}'] >= 1
    assert series['vram_gateway_key_requests_rejected_total{key="app",reason="scope"}'] >= 1
    assert series['vram_gateway_key_completion_tokens_total{key="app"}'] >= 3
    assert series['vram_gateway_key_prompt_tokens_total{key="app"}'] >= 1
    assert series['vram_gateway_key_requests_rejected_total{key="solo",reason="rate"}'] == 0
    for name in KEYS:
        assert f"sk-{name}" not in text and key_digest(f"sk-{name}") not in text


def test_responses_keep_the_keys_scope_and_a_stream_stops_at_the_token_budget(base):
    with pytest.raises(openai.PermissionDeniedError):
        client(base, "app").responses.create(model="other", input="a", max_output_tokens=2)
    short = client(base, "short")
    events = list(short.responses.create(model="chat", input="Say hello.", max_output_tokens=100, temperature=0, stream=True))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    last = events[-1]
    assert last.type == "response.incomplete" and last.response.incomplete_details.reason == "max_output_tokens"
    assert 0 < len(deltas) <= 4 and last.response.usage.output_tokens == len(deltas)
    assert last.response.output[0].content[0].text == "".join(d.delta for d in deltas)  # what was sent, in the Response
    with pytest.raises(openai.RateLimitError) as info:
        short.responses.create(model="chat", input="a", max_output_tokens=2)
    assert info.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
