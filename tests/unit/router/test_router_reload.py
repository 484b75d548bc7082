"""The router's POST /admin/reload in process (fake nodes on an httpx MockTransport): what a
reload applies, what it refuses, and who may ask; tests/system/test_router_reload.py does it to a
real router with SIGHUP and `gateway reload`."""

from __future__ import annotations

import httpx
import pytest
import tomli_w
from litestar.testing import TestClient

from tests.unit.http.apps import BASE_URL

from gateway.config.keys import key_digest
from gateway.config.loading import load_config
from gateway.http.auth import RELOAD_TOKEN_HEADER
from gateway.router.app import create_router_app
from tests.unit.router.nodes import completion, models_listing

TOKEN = "the-reload-token"


def key(name: str, **fields) -> dict:
    return {"name": name, "key_sha256": key_digest(f"sk-{name}"), **fields}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer sk-{name}"}


def cluster(nodes=("n",), models=("a",), keys=None, keys_file=None, **gateway) -> dict:
    doc: dict = {
        "gateway": {"internal_api_key": "internal-key", **gateway, **({"keys_file": keys_file} if keys_file else {})},
        "router": {"poll_interval_s": 60},
        "nodes": [{"name": n, "gpus": ["24GiB"], "url": f"http://node-{n}:8080"} for n in nodes],
        "models": [{"name": m, "path": f"/m/{m}.gguf"} for m in models],
    }
    if keys is not None:
        doc["keys"] = keys
    return doc


class Nodes:
    """Every node serves every model it is asked about; records which nodes were polled."""

    def __init__(self) -> None:
        self.polled: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host.removeprefix("node-")
        if request.url.path == "/v1/models":
            self.polled.append(host)
            return models_listing("a", "b")
        return completion("a")


@pytest.fixture
def setup(tmp_path):
    nodes = Nodes()
    path = tmp_path / "cluster.toml"

    def write(doc: dict) -> None:
        path.write_text(tomli_w.dumps(doc))

    def start(doc: dict) -> TestClient:
        write(doc)
        app = create_router_app(load_config(path, environ={}), transport=httpx.MockTransport(nodes.handle), config_path=path, reload_token=TOKEN)
        return TestClient(app, base_url=BASE_URL)

    return start, write, nodes, tmp_path


def reload(client: TestClient, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post("/admin/reload", headers=headers if headers is not None else {RELOAD_TOKEN_HEADER: TOKEN})


def test_a_reload_swaps_the_keys_and_names_what_changed(setup):
    start, write, _, _ = setup
    with start(cluster(keys=[key("old"), key("same", models=["a"]), key("scoped", models=["a"])])) as client:
        assert client.get("/v1/models", headers=auth("old")).status_code == 200
        write(cluster(keys=[key("new"), key("same", models=["a"]), key("scoped", models=["a", "b"])], models=("a", "b")))
        r = reload(client)
        assert r.status_code == 200, r.text
        assert r.json()["keys"] == {"unchanged": ["same"], "removed": ["old"], "changed": ["scoped"], "added": ["new"]}
        assert r.json()["models"]["added"] == ["b"] and r.json()["not_applied"] == []
        assert client.get("/v1/models", headers=auth("old")).status_code == 401
        assert [m["id"] for m in client.get("/v1/models", headers=auth("scoped")).json()["data"]] == ["a", "b"]
        assert 'vram_gateway_key_prompt_tokens_total{key="new"} 0.0' in client.get("/metrics").text
        assert key_digest("sk-new") not in r.text


def test_a_reload_reads_the_keys_file_again(setup):
    start, write, _, tmp = setup
    keys = tmp / "keys.toml"
    keys.write_text(tomli_w.dumps({"keys": [key("first")]}))
    with start(cluster(keys_file="keys.toml")) as client:
        assert client.get("/v1/models", headers=auth("first")).status_code == 200
        keys.write_text(tomli_w.dumps({"keys": [key("second")]}))
        assert reload(client).status_code == 200
        assert client.get("/v1/models", headers=auth("first")).status_code == 401
        assert client.get("/v1/models", headers=auth("second")).status_code == 200
        # A broken keys file refuses the whole reload: the keys in force stay.
        keys.write_text(tomli_w.dumps({"keys": [{"name": "x", "key_sha256": "nothex"}]}))
        r = reload(client)
        assert r.status_code == 422 and any("keys[0].key_sha256: 'nothex'" in p for p in r.json()["problems"])
        assert client.get("/v1/models", headers=auth("second")).status_code == 200


def test_added_nodes_are_polled_before_the_reload_answers_and_removed_ones_are_gone(setup):
    start, write, nodes, _ = setup
    with start(cluster(nodes=("n", "m"))) as client:
        write(cluster(nodes=("n", "o")))
        nodes.polled.clear()
        r = reload(client)
        assert r.json()["nodes"] == {"unchanged": ["n"], "removed": ["m"], "changed": [], "added": ["o"]}
        assert sorted(nodes.polled) == ["n", "o"]
        health = client.get("/health").json()
        assert health["status"] == "ok" and list(health["nodes"]) == ["n", "o"]


def test_settings_read_at_start_are_kept_and_named_in_the_answer(setup):
    start, write, _, _ = setup
    with start(cluster(port=8500, max_body_bytes=1000)) as client:
        write(cluster(port=8501, max_body_bytes=2000, default_model="a"))
        r = reload(client)
        assert r.status_code == 200
        assert r.json()["not_applied"] == [
            "gateway.port: 8501 (the router runs with 8500 until it restarts)",
            "gateway.max_body_bytes: 2000 (the router runs with 1000 until it restarts)",
        ]


def test_a_reload_that_would_open_a_network_router_without_keys_is_refused(setup):
    start, write, _, _ = setup
    with start(cluster(host="0.0.0.0", keys=[key("ops", admin=True)])) as client:
        write(cluster(host="0.0.0.0"))
        r = reload(client)
        assert r.status_code == 422 and r.json()["problems"][0].startswith("gateway.host: '0.0.0.0' (listens beyond loopback")
        assert client.get("/v1/models").status_code == 401


def test_only_an_admin_key_or_the_servers_token_may_reload(setup):
    start, write, _, _ = setup
    with start(cluster(keys=[key("user"), key("ops", admin=True)])) as client:
        assert reload(client, {}).status_code == 401
        assert reload(client, auth("user")).status_code == 403
        assert reload(client, {RELOAD_TOKEN_HEADER: "wrong"}).status_code == 401
        assert reload(client, auth("ops")).status_code == 200
        assert reload(client).status_code == 200


def test_a_poll_that_answers_after_a_reload_removed_or_moved_its_node_changes_nothing(tmp_path):
    import asyncio

    from gateway.router.app import Router
    from gateway.router.directory import Directory
    from gateway.router.metrics import RouterMetrics

    path = tmp_path / "cluster.toml"

    async def main() -> None:
        polls = {"n": 0, "m": 0}
        out, answer = asyncio.Event(), asyncio.Event()

        async def handle(request: httpx.Request) -> httpx.Response:
            host = request.url.host.removeprefix("node-")
            polls[host] = polls.get(host, 0) + 1
            if host in ("n", "m") and polls[host] == 2:  # the second round: held until the reload
                out.set()
                await answer.wait()
                if host == "m":
                    raise httpx.ConnectError("refused", request=request)
            return httpx.Response(200, json={"object": "list", "data": [{"id": "a", "state": "ready", "queue": {}}]})

        path.write_text(tomli_w.dumps(cluster(nodes=("n", "m"))))
        config = load_config(path, environ={})
        directory = Directory(config)
        router = Router(config, directory, RouterMetrics(lambda: {}))
        async with router.running(httpx.MockTransport(handle)):
            held = asyncio.create_task(router.poll_all())
            await out.wait()
            moved = cluster(nodes=("n",))
            moved["nodes"][0]["url"] = "http://node-n2:8080"
            path.write_text(tomli_w.dumps(moved))
            router.apply(load_config(path, environ={}))
            answer.set()
            await held  # neither answer may touch the new directory (nor raise)
        assert list(directory.nodes) == ["n"]
        assert directory.nodes["n"].url == "http://node-n2:8080" and directory.nodes["n"].reason == "not polled yet"

    asyncio.run(main())
