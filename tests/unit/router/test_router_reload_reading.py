"""The router keeps answering while a reload reads its cluster config: a big keys file takes
seconds to parse (20,000 keys: 6-7 s on the 2-core development machine at load 6), and before,
the file was read on the router's event loop, so /health and every request stalled meanwhile
(a health probe took 11 s during such a reload).

The config file's read is held (an Event) while the test asks /health; nothing waits on a timer.
"""

from __future__ import annotations


import httpx
import tomli_w
from litestar.testing import TestClient

from gateway.config.loading import load_config
from gateway.http.auth import RELOAD_TOKEN_HEADER
from gateway.router.app import create_router_app
from tests.unit.http.apps import health_during_held_reload, hold_config_reads
from tests.unit.router.nodes import models_listing

TOKEN = "the-reload-token"


def node(request: httpx.Request) -> httpx.Response:
    return models_listing("a")


def test_the_router_answers_while_a_reload_reads_the_file(tmp_path, monkeypatch):
    path = tmp_path / "cluster.toml"
    path.write_text(tomli_w.dumps({
        "router": {"poll_interval_s": 60},
        "nodes": [{"name": "n", "gpus": ["24GiB"], "url": "http://node-n:8080"}],
        "models": [{"name": "a", "path": "/m/a.gguf"}],
    }))
    held = hold_config_reads(monkeypatch)
    app = create_router_app(load_config(path, environ={}), transport=httpx.MockTransport(node), config_path=path, reload_token=TOKEN)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        health, answers = health_during_held_reload(client, held, {RELOAD_TOKEN_HEADER: TOKEN})
    assert health == 200
    assert held.gave_up == [False], "/health answered only once the reload's read gave up"
    assert answers == [200]
