"""The router's log says why a node is down from its first poll (a wrong url, a wrong internal
key, a node not started yet), not only when an up node goes down: before, a router whose node
never answered said nothing in its log (only /health told)."""

from __future__ import annotations

import logging

import httpx
from litestar.testing import TestClient

from gateway.config.loading import load_config
from gateway.http.auth import RELOAD_TOKEN_HEADER
from gateway.router.app import create_router_app

CLUSTER = """
[gateway]
internal_api_key = "wrong-key"

[router]
poll_interval_s = 60

[[nodes]]
name = "n"
gpus = ["24GiB"]
url = "http://node-n:8080"

[[models]]
name = "a"
path = "/m/a.gguf"
"""


def refusing_node(request: httpx.Request) -> httpx.Response:
    return httpx.Response(401, json={"error": {"message": "a valid API key is required", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})


def test_a_node_down_from_the_first_poll_is_logged_once_with_its_reason(caplog, tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER)
    app = create_router_app(load_config(path, environ={}), transport=httpx.MockTransport(refusing_node), config_path=path, reload_token="t")
    with caplog.at_level(logging.WARNING, logger="gateway.router"), TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/health").json()["nodes"]["n"]["up"] is False
        # A reload polls every node again: still down, nothing new to say.
        assert client.post("/admin/reload", headers={RELOAD_TOKEN_HEADER: "t"}).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.router"]
    assert lines.count("node n: down (/v1/models answered HTTP 401)") == 1
