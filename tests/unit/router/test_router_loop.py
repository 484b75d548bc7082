"""A router whose [[nodes]] url points at a router (itself here) marks that node down, saying
why, instead of listing itself inside its own listing (which nested one level deeper at every
poll until /v1/models failed with a RecursionError) and forwarding requests to itself.

The node ``self`` is the router app itself (its requests go back into it through an
httpx.ASGITransport); the node ``real`` is a fake gateway on a MockTransport.
"""

from __future__ import annotations

import httpx
from litestar.testing import TestClient

from gateway.config.loading import parse_config
from gateway.router.app import create_router_app
from tests.unit.router.nodes import completion, models_listing

# What a router sends with each request to a node (gateway.router.app.ROUTED_HEADER).
ROUTED_HEADER = "X-Gateway-Routed"

CLUSTER = """
[gateway]
internal_api_key = "internal-key"

[router]
poll_interval_s = 60

[[nodes]]
name = "self"
gpus = ["24GiB"]
url = "http://router-self:8080"

[[nodes]]
name = "real"
gpus = ["24GiB"]
url = "http://node-real:8080"

[[models]]
name = "chat"
path = "/m/chat.gguf"
replicas = 2
"""


def real_node(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v1/models":
        return models_listing("chat")
    return completion("chat", "chat.completion")


class SelfAndReal(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.app = None
        self.real = httpx.MockTransport(real_node)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "router-self":
            return await httpx.ASGITransport(app=self.app).handle_async_request(request)
        return await self.real.handle_async_request(request)


def router() -> TestClient:
    transport = SelfAndReal()
    app = create_router_app(parse_config(CLUSTER, environ={}), transport=transport)
    transport.app = app
    return TestClient(app, base_url="http://127.0.0.1")


def test_a_node_url_that_points_at_the_router_is_down_with_the_reason():
    with router() as client:
        nodes = client.get("/health").json()["nodes"]
        assert nodes["real"]["up"] is True
        assert nodes["self"]["up"] is False
        assert "is a router, not a node's gateway" in nodes["self"]["reason"]
        # Requests go to the real node only, never round the loop.
        for _ in range(4):
            r = client.post("/v1/chat/completions", json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200
            assert r.headers["x-gateway-node"] == "real"
        listing = client.get("/v1/models").json()["data"]
        assert [n["node"] for n in listing[0]["nodes"] if n["up"]] == ["real"]


def test_a_request_a_router_sent_is_refused_by_a_router():
    with router() as client:
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/health")):
            r = client.request(method, path, headers={ROUTED_HEADER: "1"}, json={"model": "chat"} if method == "POST" else None)
            assert r.status_code == 508
            assert r.json()["error"]["code"] == "routing_loop"
