"""The router app against fake nodes on an httpx MockTransport: forwarding, keys, failover,
errors and metrics, without processes. tests/system/test_router.py runs it against real gateways."""

from __future__ import annotations

import json

import httpx
import pytest
from litestar.testing import TestClient

from tests.unit.http.apps import BASE_URL
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.loading import parse_config
from gateway.router.app import NODE_HEADER, create_router_app

CLUSTER = """
[gateway]
api_keys = ["client-key"]
internal_api_key = "internal-key"

[router]
poll_interval_s = 60

[[nodes]]
name = "a"
gpus = ["24GiB"]
url = "http://node-a:8080"

[[nodes]]
name = "b"
gpus = ["24GiB"]
url = "http://node-b:8080"

[[models]]
name = "chat"
path = "/m/chat.gguf"
replicas = 2

[[models]]
name = "code"
path = "/m/code.gguf"
aliases = ["coder"]
"""

KEY = {"Authorization": "Bearer client-key"}


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


class FakeNode:
    """A node's gateway as the router sees it: /v1/models, and answers to forwarded requests."""

    def __init__(self, name: str, models: dict[str, str]) -> None:
        self.name = name
        self.models = models  # name -> state
        self.up = True
        self.running: dict[str, int] = {}
        self.answer: tuple[int, dict] | None = None  # a fixed answer instead of a completion
        self.fail: Exception | None = None  # raised once the request has reached the node
        self.die_mid_stream = False
        self.seen: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": 1, "state": s, "reason": None,
                 "queue": {"running": self.running.get(m, 0), "waiting": 0, "max_concurrency": 1, "queue_size": 4}}
                for m, s in self.models.items()
            ]
            return httpx.Response(200, json={"object": "list", "data": data})
        self.seen.append(request)
        if self.fail is not None:
            raise self.fail
        if self.answer is not None:
            status, body = self.answer
            return httpx.Response(status, json=body, headers={"Retry-After": "1"})
        body = json.loads(request.content)
        if body.get("stream"):
            async def chunks():
                for i in range(3):
                    yield f'data: {{"node": "{self.name}", "i": {i}}}\n\n'.encode()
                    if self.die_mid_stream:
                        raise httpx.ReadError("connection reset by peer")
                yield b"data: [DONE]\n\n"

            return httpx.Response(200, content=chunks(), headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={"object": "text_completion", "model": body.get("model"), "node": self.name})


@pytest.fixture
def nodes() -> dict[str, FakeNode]:
    return {"a": FakeNode("a", {"chat": "ready", "code": "ready"}), "b": FakeNode("b", {"chat": "ready"})}


@pytest.fixture
def client(nodes):
    def route(request: httpx.Request) -> httpx.Response:
        return nodes[request.url.host.removeprefix("node-")].handle(request)

    app = create_router_app(parse_config(CLUSTER, environ={}), transport=httpx.MockTransport(route))
    with TestClient(app, base_url=BASE_URL) as c:
        yield c


def ask(client, model, **extra):
    return client.post("/v1/completions", json={"model": model, "prompt": "hi", **extra}, headers=KEY)


def test_a_request_goes_to_a_node_that_serves_its_model(client, nodes):
    r = ask(client, "coder")
    assert r.status_code == 200
    assert r.headers[NODE_HEADER] == "a" and r.json()["node"] == "a"
    (sent,) = nodes["a"].seen
    assert json.loads(sent.content) == {"model": "coder", "prompt": "hi"}  # forwarded as sent


def test_nodes_get_the_internal_key_never_the_clients(client, nodes):
    ask(client, "code")
    (sent,) = nodes["a"].seen
    assert sent.headers["authorization"] == "Bearer internal-key"


def test_the_router_checks_the_clients_key(client):
    r = client.post("/v1/completions", json={"model": "code"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/health").status_code == 200  # health_requires_key is false


def test_streams_are_relayed_with_the_nodes_content_type(client):
    r = ask(client, "code", stream=True)
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n") and r.text.count('"node": "a"') == 3


def test_an_unknown_model_is_a_404_listing_the_known_names(client):
    r = ask(client, "nope")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "model 'nope' not found; known models: chat, code, coder"


def test_a_refused_connection_goes_to_the_other_replica(client, nodes):
    nodes["a"].up = False
    answered = {ask(client, "chat").headers[NODE_HEADER] for _ in range(4)}
    assert answered == {"b"}
    assert not nodes["a"].seen


def test_no_node_left_is_a_503_that_names_each_node(client, nodes):
    nodes["a"].up = False
    r = ask(client, "code")
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "model_unavailable"
    assert err["message"].startswith("model 'code': no node can take it now: node a: down (ConnectError: connection refused")


def test_a_node_saying_the_model_is_unavailable_hands_the_request_on(client, nodes):
    nodes["a"].answer = (503, {"error": {"message": "model 'chat' is starting", "type": "service_unavailable", "param": None, "code": "model_unavailable"}})
    nodes["b"].answer = None
    # Whichever node is tried first, b answers.
    assert {ask(client, "chat").headers[NODE_HEADER] for _ in range(4)} == {"b"}


def test_when_every_replica_is_full_the_client_gets_the_429(client, nodes):
    full = (429, {"error": {"message": "busy", "type": "rate_limit_error", "param": None, "code": "queue_full"}})
    nodes["a"].answer = nodes["b"].answer = full
    r = ask(client, "chat")
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert len(nodes["a"].seen) == len(nodes["b"].seen) == 1


def test_a_nodes_own_error_answer_is_passed_through(client, nodes):
    nodes["a"].answer = (400, {"error": {"message": "max_tokens: -1", "type": "invalid_request_error", "param": "max_tokens", "code": None}})
    r = ask(client, "code")
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert r.headers[NODE_HEADER] == "a"


def test_a_bad_body_is_a_400_before_any_node_is_asked(client, nodes):
    json_type = {**KEY, "Content-Type": "application/json"}
    r = client.post("/v1/completions", content=b"[1, 2]", headers=json_type)
    assert r.status_code == 400 and r.json()["error"]["message"] == "the request body must be a JSON object"
    r = client.post("/v1/completions", content=b"{nope", headers=json_type)
    assert r.status_code == 400
    assert not nodes["a"].seen and not nodes["b"].seen


def test_the_model_list_merges_the_nodes_with_where_each_model_runs(client):
    data = client.get("/v1/models", headers=KEY).json()["data"]
    where = {m["id"]: [n["node"] for n in m["nodes"]] for m in data}
    assert where == {"chat": ["a", "b"], "code": ["a"]}
    one = client.get("/v1/models/coder", headers=KEY).json()
    assert one["id"] == "code" and one["state"] == "ready"


def test_metrics_count_requests_per_node_and_model(client, nodes):
    ask(client, "code")
    nodes["a"].up = False
    ask(client, "chat")
    ask(client, "nope")
    text = client.get("/metrics").text
    assert sample(text, "vram_gateway_router_requests_total", node="a", model="code", status="200") == 1
    assert sample(text, "vram_gateway_router_requests_total", node="b", model="chat", status="200") == 1
    assert sample(text, "vram_gateway_router_requests_total", node="", model="", status="404") == 1
    assert sample(text, "vram_gateway_router_node_up", node="a") == 0
    assert sample(text, "vram_gateway_router_in_flight", node="b", model="chat") == 0


def test_a_node_that_fails_after_taking_the_request_is_a_502_and_not_retried(client, nodes):
    # The node may have started the work: sending it again elsewhere could run it twice.
    nodes["a"].fail = httpx.ReadTimeout("timed out")
    r = ask(client, "code")
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "node_failed"
    assert r.json()["error"]["message"] == "node a failed: ReadTimeout: timed out"


def test_a_node_dying_mid_stream_ends_the_stream_with_an_error_event(client, nodes):
    nodes["a"].die_mid_stream = True
    r = ask(client, "code", stream=True)
    assert r.status_code == 200  # the headers were already sent
    events = [line for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[0] == 'data: {"node": "a", "i": 0}'
    error = json.loads(events[1][6:])["error"]
    assert error["message"] == "node a failed mid-answer: ReadError: connection reset by peer"
    assert events[-1] == "data: [DONE]"
    text = client.get("/metrics").text
    assert sample(text, "vram_gateway_router_requests_total", node="a", model="code", status="502") == 1

