"""The router keeps answering while a reload reads its cluster config: a big keys file takes
seconds to parse (20,000 keys: 6-7 s on the 2-core development machine at load 6), and before,
the file was read on the router's event loop, so /health and every request stalled meanwhile
(a health probe took 11 s during such a reload).

The config file's read is held (an Event) while the test asks /health; nothing waits on a timer.
"""

from __future__ import annotations

import threading

import httpx
import tomli_w
from litestar.testing import TestClient

from gateway.config.loading import load_config
from gateway.http.auth import RELOAD_TOKEN_HEADER
from gateway.router.app import create_router_app
from testkit.serving import HANG_S
from tests.unit.http.apps import hold_config_reads

TOKEN = "the-reload-token"


def node(request: httpx.Request) -> httpx.Response:
    data = [{"id": "a", "object": "model", "created": 1, "state": "ready", "queue": {"max_concurrency": 4}}]
    return httpx.Response(200, json={"object": "list", "data": data})


def test_the_router_answers_while_a_reload_reads_the_file(tmp_path, monkeypatch):
    path = tmp_path / "cluster.toml"
    path.write_text(tomli_w.dumps({
        "router": {"poll_interval_s": 60},
        "nodes": [{"name": "n", "gpus": ["24GiB"], "url": "http://node-n:8080"}],
        "models": [{"name": "a", "path": "/m/a.gguf"}],
    }))
    held = hold_config_reads(monkeypatch)
    app = create_router_app(load_config(path, environ={}), transport=httpx.MockTransport(node), config_path=path, reload_token=TOKEN)
    answers: list[int] = []
    with TestClient(app, base_url="http://127.0.0.1") as client:
        reloading = threading.Thread(target=lambda: answers.append(client.post("/admin/reload", headers={RELOAD_TOKEN_HEADER: TOKEN}).status_code))
        reloading.start()
        try:
            assert held.reading.wait(HANG_S)
            assert client.get("/health").status_code == 200
        finally:
            held.release.set()
            reloading.join(HANG_S)
    assert held.gave_up == [False], "/health answered only once the reload's read gave up"
    assert answers == [200]
