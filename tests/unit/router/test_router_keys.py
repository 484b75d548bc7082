"""Named keys through the router (fake nodes on an httpx MockTransport, the keys' clock injected):
scopes, limits, token budgets and per-key series as on a gateway (tests/unit/http/test_keys.py);
tests/system/test_router_keys.py runs the same key matrix against a real node and a real router."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import tomli_w
from litestar.testing import TestClient

from tests.unit.http.apps import BASE_URL
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.keys import key_digest
from gateway.config.loading import parse_config
from gateway.router.app import create_router_app
from tests.unit.router.nodes import models_listing

KEYS = {
    "app": {"models": ["a"]},
    "rate": {"models": ["a"], "requests_per_minute": 2},
    "tok": {"tokens_per_minute": 10},
    "all": {},
}
TOKENS = 6  # each fake completion: 6 tokens of "wN ", its prompt 1 token


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def cluster(**gateway) -> str:
    return tomli_w.dumps({
        "gateway": {"internal_api_key": "internal-key", **gateway},
        "router": {"poll_interval_s": 60},
        "nodes": [{"name": "n", "gpus": ["24GiB"], "url": "http://node-n:8080"}],
        "models": [{"name": "a", "path": "/m/a.gguf"}, {"name": "b", "path": "/m/b.gguf", "aliases": ["bee"]}],
        "keys": [{"name": name, "key_sha256": key_digest(f"sk-{name}"), **fields} for name, fields in KEYS.items()],
    })


class FakeNode:
    """A node that takes only the internal key and answers as a gateway does: text completions
    of TOKENS tokens, streamed or whole, with their usage."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.closed_early = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != "Bearer internal-key":
            return httpx.Response(401, json={"error": {"message": "no", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
        if request.url.path == "/v1/models":
            return models_listing("a", "b")
        body = json.loads(request.content)
        self.seen.append(body)
        if request.url.path == "/v1/responses":
            return self.respond(body)
        usage = {"prompt_tokens": 1, "completion_tokens": TOKENS, "total_tokens": 1 + TOKENS}
        base = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            choice = {"index": 0, "text": "".join(f"w{i} " for i in range(TOKENS)), "finish_reason": "length", "logprobs": None}
            return httpx.Response(200, json={**base, "choices": [choice], "usage": usage})
        events = []
        for i in range(TOKENS):
            choice = {"index": 0, "text": f"w{i} ", "finish_reason": "length" if i == TOKENS - 1 else None, "logprobs": None}
            events.append(b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return httpx.Response(200, stream=Events(self, events), headers={"content-type": "text/event-stream"})


    def respond(self, body: dict) -> httpx.Response:
        """The Responses API as a node answers it (gateway.http.responses): TOKENS tokens, the
        usage in input/output tokens, a stream's usage in its response.completed event only."""
        text = "".join(f"w{i} " for i in range(TOKENS))
        usage = {"input_tokens": 1, "output_tokens": TOKENS, "total_tokens": 1 + TOKENS}
        shell = {"id": "resp_1", "object": "response", "created_at": 1, "model": body["model"], "status": "in_progress", "output": [], "usage": None}
        message = {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}
        done = {**shell, "status": "completed", "output": [message], "usage": usage}
        if not body.get("stream"):
            return httpx.Response(200, json=done)
        opened = {**message, "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        at = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
        kinds = [("response.created", {"response": shell}), ("response.in_progress", {"response": shell})]
        kinds += [("response.output_item.added", {"output_index": 0, "item": opened}), ("response.content_part.added", {**at, "part": part})]
        kinds += [("response.output_text.delta", {**at, "delta": f"w{i} "}) for i in range(TOKENS)]
        kinds += [("response.output_text.done", {**at, "text": text}), ("response.content_part.done", {**at, "part": {**part, "text": text}})]
        kinds += [("response.output_item.done", {"output_index": 0, "item": message}), ("response.completed", {"response": done})]
        events = [
            f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': n, **fields})}\n\n".encode()
            for n, (kind, fields) in enumerate(kinds)
        ]
        return httpx.Response(200, stream=Events(self, events), headers={"content-type": "text/event-stream"})


class Events(httpx.AsyncByteStream):
    """A node's event stream; closed before its end, it counts as a generation let go."""

    def __init__(self, node: FakeNode, events: list[bytes]) -> None:
        self.node, self.events, self.sent = node, events, 0

    async def __aiter__(self):
        for event in self.events:
            yield event
            self.sent += 1

    async def aclose(self) -> None:
        if self.sent < len(self.events):
            self.node.closed_early += 1


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
def router(node):
    clock = Clock()
    app = create_router_app(parse_config(cluster(), environ={}), transport=httpx.MockTransport(node.handle), key_clock=clock)
    with TestClient(app, base_url=BASE_URL) as client:
        yield client, clock


def oai(client: TestClient, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=f"sk-{name}", http_client=client, max_retries=0)


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def test_without_a_key_or_with_a_wrong_one_the_router_answers_401_and_asks_no_node(router, node):
    client, _ = router
    assert client.post("/v1/completions", json={"model": "a", "prompt": "x"}).status_code == 401
    r = client.post("/v1/completions", json={"model": "a", "prompt": "x"}, headers={"Authorization": "Bearer sk-nobody"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/models").status_code == 401
    assert not node.seen


def test_a_scoped_key_lists_and_uses_only_its_models_and_gets_403_for_the_others(router, node):
    client, _ = router
    app = oai(client, "app")
    assert [m.id for m in app.models.list()] == ["a"]
    assert app.completions.create(model="a", prompt="x").choices
    for model in ("b", "bee", "nope"):  # another model, its alias, a name nobody has: all 403
        with pytest.raises(openai.PermissionDeniedError) as info:
            app.completions.create(model=model, prompt="x")
        assert info.value.body["message"] == f"key 'app' may not use model {model!r}; its models: a"
    with pytest.raises(openai.PermissionDeniedError):
        app.models.retrieve("b")
    assert [b["model"] for b in node.seen] == ["a"]
    assert sorted(m.id for m in oai(client, "all").models.list()) == ["a", "b"]


def test_requests_per_minute_answers_429_with_retry_after_and_the_ratelimit_headers(router):
    client, clock = router
    rate = oai(client, "rate")
    for left in ("1", "0"):
        raw = rate.completions.with_raw_response.create(model="a", prompt="x")
        assert (raw.headers["x-ratelimit-limit-requests"], raw.headers["x-ratelimit-remaining-requests"]) == ("2", left)
    with pytest.raises(openai.RateLimitError) as info:
        rate.completions.create(model="a", prompt="x")
    assert info.value.body["code"] == "rate" and 1 <= int(info.value.response.headers["retry-after"]) <= 60
    clock.now += 60
    assert rate.completions.create(model="a", prompt="x").choices


def test_tokens_per_minute_counts_the_nodes_usage(router):
    client, clock = router
    tok = oai(client, "tok")
    first = tok.completions.with_raw_response.create(model="a", prompt="x")  # 1 + 6 tokens
    assert (first.headers["x-ratelimit-limit-tokens"], first.headers["x-ratelimit-remaining-tokens"]) == ("10", "3")
    tok.completions.create(model="b", prompt="x")
    with pytest.raises(openai.RateLimitError) as info:
        tok.completions.create(model="a", prompt="x")
    assert "tokens_per_minute (10)" in info.value.body["message"]
    clock.now += 60
    assert tok.completions.create(model="a", prompt="x").choices


def test_a_stream_stops_at_the_keys_token_budget_and_the_node_is_let_go(router, node):
    client, _ = router
    tok = oai(client, "tok")
    tok.completions.create(model="a", prompt="x")  # 7 of 10 used: 3 left
    chunks = list(tok.completions.create(model="a", prompt="x", stream=True, stream_options={"include_usage": True}))
    assert [c.choices[0].text for c in chunks if c.choices and c.choices[0].text] == ["w0 ", "w1 ", "w2 "]
    stop = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert stop.choices[0].finish_reason == "length"
    assert "key 'tok' reached its tokens_per_minute (10)" in stop.model_extra["note"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert node.closed_early == 1  # the router closed the node's answer: the generation stops there


def test_a_keyed_stream_asks_the_node_for_usage_and_the_client_gets_it_only_when_asked(router, node):
    client, _ = router
    every = oai(client, "all")
    chunks = list(every.completions.create(model="a", prompt="x", stream=True))
    assert node.seen[-1]["stream_options"] == {"include_usage": True}
    assert all(c.usage is None for c in chunks) and len(chunks) == TOKENS
    text = client.get("/metrics").text
    assert sample(text, "vram_gateway_key_prompt_tokens_total", key="all") == 1
    assert sample(text, "vram_gateway_key_completion_tokens_total", key="all") == TOKENS


def test_responses_are_forwarded_within_the_keys_scope_and_charged_their_input_and_output_tokens(router, node):
    client, _ = router
    tok = oai(client, "tok")
    raw = tok.responses.with_raw_response.create(model="a", input="x")  # 1 + 6 tokens
    assert raw.parse().output_text == "w0 w1 w2 w3 w4 w5 "
    assert raw.headers["x-ratelimit-remaining-tokens"] == "3"
    with pytest.raises(openai.PermissionDeniedError):
        oai(client, "app").responses.create(model="b", input="x")
    events = list(oai(client, "all").responses.create(model="a", input="x", stream=True))
    assert "stream_options" not in node.seen[-1]  # the usage comes in response.completed anyway
    assert events[-1].type == "response.completed" and events[-1].response.usage.output_tokens == TOKENS
    text = client.get("/metrics").text
    assert sample(text, "vram_gateway_key_prompt_tokens_total", key="all") == 1
    assert sample(text, "vram_gateway_key_completion_tokens_total", key="all") == TOKENS
    assert sample(text, "vram_gateway_key_completion_tokens_total", key="tok") == TOKENS


def test_a_responses_stream_stops_at_the_keys_token_budget_with_response_incomplete(router, node):
    client, _ = router
    tok = oai(client, "tok")
    tok.responses.create(model="a", input="x")  # 7 of 10 used: 3 left
    events = list(tok.responses.create(model="a", input="x", stream=True))
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["w0 ", "w1 ", "w2 "]
    last = events[-1]
    assert last.type == "response.incomplete" and last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.id == "resp_1" and last.response.usage.output_tokens == 3
    # The message item is closed with what the client got, and the Response holds it.
    assert [e.type for e in events[-4:-1]] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert events[-4].text == "w0 w1 w2 " and events[-2].item.status == "incomplete"
    (item,) = last.response.output
    assert item.id == "msg_1" and item.status == "incomplete" and item.content[0].text == "w0 w1 w2 "
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "key 'tok' reached its tokens_per_minute (10)" in last.model_extra["note"]
    assert node.closed_early == 1
    with pytest.raises(openai.RateLimitError):
        tok.responses.create(model="a", input="x")


def test_per_key_series_count_answers_tokens_and_refusals_by_name_never_the_key(router):
    client, _ = router
    app = oai(client, "app")
    app.completions.create(model="a", prompt="x")
    with pytest.raises(openai.PermissionDeniedError):
        app.completions.create(model="b", prompt="x")
    text = client.get("/metrics").text
    assert sample(text, "vram_gateway_key_requests_total", key="app", status="200") == 1
    assert sample(text, "vram_gateway_key_requests_total", key="app", status="403") == 1
    assert sample(text, "vram_gateway_key_requests_rejected_total", key="app", reason="scope") == 1
    assert sample(text, "vram_gateway_key_completion_tokens_total", key="app") == TOKENS
    assert sample(text, "vram_gateway_key_requests_rejected_total", key="rate", reason="rate") == 0  # made at zero
    assert "sk-app" not in text and key_digest("sk-app") not in text


def test_a_scoped_key_may_not_use_a_default_model_outside_its_scope(node):
    app = create_router_app(parse_config(cluster(default_model="b"), environ={}), transport=httpx.MockTransport(node.handle))
    with TestClient(app, base_url=BASE_URL) as client:
        r = client.post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer sk-app"})
        assert r.status_code == 403
        assert r.json()["error"]["message"] == "key 'app' may not use the default model; its models: a"
