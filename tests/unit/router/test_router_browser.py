"""A router without keys on loopback refuses what a web page could make a browser send it, as a
gateway does (gateway.http.network.BrowserGuard): a page whose name was re-bound to 127.0.0.1
(DNS rebinding; its Host is its own name), another site's Origin, a body that is not JSON. Before,
the router forwarded such a request to a node with the node's own Host and the JSON type, so the
node's checks could not see it, and a rebound page could use every model and read the answers.
"""

from __future__ import annotations

import httpx
import pytest
from litestar.testing import TestClient

from gateway.config.loading import parse_config
from gateway.router.app import create_router_app
from tests.unit.router.nodes import models_listing

CLUSTER = """
[gateway]
host = "127.0.0.1"

[router]
poll_interval_s = 60

[[nodes]]
name = "a"
gpus = ["24GiB"]
url = "http://node-a:8080"

[[models]]
name = "chat"
path = "/m/chat.gguf"
"""

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


class Node:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return models_listing("chat")
        self.asked.append(request.url.path)
        return httpx.Response(200, json={"id": "c", "object": "chat.completion", "created": 1, "model": "chat", "choices": []})


@pytest.fixture
def setup():
    node = Node()
    app = create_router_app(parse_config(CLUSTER, environ={}), transport=httpx.MockTransport(node.handle))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, node


def test_a_request_under_another_name_is_refused(setup):
    client, node = setup
    r = client.post("/v1/chat/completions", json=CHAT, headers={"Host": "rebound.example:8080"})
    assert r.status_code == 400 and "not served under the name 'rebound.example'" in r.json()["error"]["message"]
    assert client.get("/v1/models", headers={"Host": "rebound.example:8080"}).status_code == 400
    assert node.asked == []


def test_another_sites_page_and_a_body_that_is_not_json_are_refused(setup):
    client, node = setup
    r = client.post("/v1/chat/completions", json=CHAT, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site_request"
    r = client.post("/v1/chat/completions", content=b'{"model": "chat", "messages": []}', headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert node.asked == []


def test_the_router_still_answers_its_own_names(setup):
    client, node = setup
    for host in ("127.0.0.1:8080", "localhost:8080"):
        assert client.post("/v1/chat/completions", json=CHAT, headers={"Host": host}).status_code == 200
    assert node.asked == ["/v1/chat/completions"] * 2
