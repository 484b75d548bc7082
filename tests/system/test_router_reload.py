"""`gateway serve --router` reloads its cluster config on SIGHUP and on `gateway reload --url`:
its [[keys]] (a new key works, a removed one is refused from its next request, a stream already
running finishes), its [[nodes]] (added, removed) and [[models]] (a new model, replicas); an
invalid file is refused with its problems and changes nothing.

Two real gateways on loopback play the nodes (tiny models on the CPU); node-b is running from
the start but the router learns of it only from a reload. The tests rewrite the router's config
file whole, so each one stands alone.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import pytest
import tomli_w

from gateway.config.keys import key_digest
from testkit.ggufmaker import write_tiny_llama
from testkit.serving import clean_env, free_port, kill_group, spawn, wait_until, wait_until_answering, worker_held

pytestmark = pytest.mark.llama

INTERNAL_KEY = "internal-key"
INTERNAL = {"Authorization": f"Bearer {INTERNAL_KEY}"}
FORCE = {"logit_bias": {"97": 50}}  # the tiny model then writes "a" after "a" (no early end)


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer sk-{name}"}


def key(name: str, **fields) -> dict:
    return {"name": name, "key_sha256": key_digest(f"sk-{name}"), **fields}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("router-reload")
    tiny = write_tiny_llama(tmp / "tiny.gguf", n_layers=2, n_embd=64, ctx=8192)
    chat = {"name": "chat", "path": str(tiny), "n_ctx": 8192}
    nodes = {"node-a": [chat], "node-b": [chat, {"name": "extra", "path": str(tiny), "n_ctx": 256}]}
    ports = {name: free_port() for name in nodes}
    router_port = free_port()
    procs: dict = {}
    try:
        for name, models in nodes.items():
            cfg = tmp / f"{name}.toml"
            cfg.write_text(tomli_w.dumps({"gateway": {"port": ports[name], "api_keys": [INTERNAL_KEY]}, "models": models}))
            procs[name] = spawn(["serve", "--config", str(cfg)], tmp / f"{name}.log")
        for name, proc in procs.items():
            wait_until_answering(f"http://127.0.0.1:{ports[name]}", proc, tmp / f"{name}.log", timeout=120)
        urls = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}

        def write(node_names: list[str], models: list[dict], keys: list[dict], **router) -> None:
            (tmp / "cluster.toml").write_text(tomli_w.dumps({
                "gateway": {"port": router_port, "internal_api_key": INTERNAL_KEY},
                "router": {"poll_interval_s": 0.2, "poll_timeout_s": 1.0, **router},
                "nodes": [{"name": n, "gpus": ["2GiB"], "url": urls[n]} for n in node_names],
                "models": [{"path": str(tiny), **m} for m in models],
                "keys": keys,
            }))

        write(["node-a"], [{"name": "chat"}], [key("old", models=["chat"]), key("ops", admin=True)])
        procs["router"] = spawn(["serve", "--router", str(tmp / "cluster.toml")], tmp / "router.log")
        base = f"http://127.0.0.1:{router_port}"
        wait_until_answering(base, procs["router"], tmp / "router.log", timeout=60)
        yield {"base": base, "nodes": urls, "write": write, "proc": procs["router"], "log": tmp / "router.log"}
    finally:
        for proc in procs.values():
            kill_group(proc)


def models_of(base: str, name: str) -> int | list[str]:
    """The model ids a key sees, or the status code when it is refused."""
    r = httpx.get(base + "/v1/models", headers=auth(name), timeout=30)
    return [m["id"] for m in r.json()["data"]] if r.status_code == 200 else r.status_code


def complete(base: str, name: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "a", "max_tokens": 3, **FORCE}
    return httpx.post(base + "/v1/completions", json=body, headers=auth(name), timeout=60)


def reload_cli(base: str, api_key: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "reload", "--url", base, "--api-key", api_key],
        capture_output=True, text=True, env=clean_env(), timeout=120,
    )


def test_sighup_applies_new_keys_nodes_and_models_and_a_running_stream_finishes(cluster):
    base, write = cluster["base"], cluster["write"]
    write(["node-a"], [{"name": "chat"}], [key("old", models=["chat"]), key("ops", admin=True)])
    reload_cli(base, "sk-ops").check_returncode()
    assert models_of(base, "old") == ["chat"] and models_of(base, "new") == 401

    body = {"model": "chat", "prompt": "a", "max_tokens": 400, "stream": True, **FORCE}
    with httpx.stream("POST", base + "/v1/completions", json=body, headers=auth("old"), timeout=120) as stream:
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        # The client has read one event of ~400 when the key it streams under is removed: its
        # stream through the router is open during the reload, however fast the node is. The
        # node's worker is held meanwhile, so the generation there is usually mid-way too.
        with worker_held(cluster["nodes"]["node-a"], "chat", INTERNAL):
            write(
                ["node-a", "node-b"],
                [{"name": "chat", "replicas": 2}, {"name": "extra"}],
                [key("new", models=["chat", "extra"]), key("ops", admin=True)],
            )
            cluster["proc"].send_signal(signal.SIGHUP)
            wait_until(lambda: models_of(base, "new") != 401, timeout=60, what="the new key accepted after SIGHUP")
            assert models_of(base, "new") == ["chat", "extra"]
            assert models_of(base, "old") == 401
            assert complete(base, "old", "chat").status_code == 401
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert any('"finish_reason":"length"' in line.replace(" ", "") for line in rest)
    assert not any('"error"' in line for line in rest)

    # node-b is polled before the reload answers; "extra" is only there.
    r = complete(base, "new", "extra")
    assert r.status_code == 200 and r.headers["x-gateway-node"] == "node-b"
    entry = httpx.get(base + "/v1/models/chat", headers=auth("new"), timeout=30).json()
    assert entry["replicas"] == 2 and sorted(n["node"] for n in entry["nodes"]) == ["node-a", "node-b"]
    metrics = httpx.get(base + "/metrics", timeout=30).text
    assert 'vram_gateway_key_requests_total{key="new",status="200"}' in metrics


def test_gateway_reload_removes_a_node_and_its_requests_go_to_the_others(cluster):
    base, write = cluster["base"], cluster["write"]
    keys = [key("app", models=["chat"]), key("ops", admin=True)]
    write(["node-a", "node-b"], [{"name": "chat", "replicas": 2}], keys)
    reload_cli(base, "sk-ops").check_returncode()
    assert {complete(base, "app", "chat").headers["x-gateway-node"] for _ in range(4)} == {"node-a", "node-b"}

    write(["node-b"], [{"name": "chat"}], keys)
    done = reload_cli(base, "sk-ops")
    assert done.returncode == 0, done.stderr
    assert "nodes: unchanged node-b; removed node-a; changed -; added -" in done.stdout
    assert {complete(base, "app", "chat").headers["x-gateway-node"] for _ in range(4)} == {"node-b"}
    assert list(httpx.get(base + "/health", timeout=30).json()["nodes"]) == ["node-b"]


def test_an_invalid_file_is_refused_with_its_problems_and_nothing_changes(cluster):
    base, write = cluster["base"], cluster["write"]
    write(["node-a"], [{"name": "chat"}], [key("app", models=["chat"]), key("ops", admin=True)])
    reload_cli(base, "sk-ops").check_returncode()
    before = {name: models_of(base, name) for name in ("app", "ops", "new")}
    assert before == {"app": ["chat"], "ops": ["chat"], "new": 401}

    # Two mistakes, both reported; the new key must not be let in by a half-applied file.
    write(["node-a"], [{"name": "chat"}], [key("new"), key("ops", admin=True), {"name": "bad", "key_sha256": "xyz"}], poll_interval_s=-1)
    refused = reload_cli(base, "sk-ops")
    assert refused.returncode == 1
    assert "keys[2].key_sha256: 'xyz'" in refused.stderr and "router.poll_interval_s: -1" in refused.stderr
    assert {name: models_of(base, name) for name in before} == before

    # A valid file that is no router's config (no [[nodes]]) is refused too.
    (cluster["log"].parent / "cluster.toml").write_text(tomli_w.dumps({"models": [{"name": "chat", "path": "/nowhere.gguf"}]}))
    r = httpx.post(base + "/admin/reload", headers=auth("ops"), timeout=60)
    assert r.status_code == 422 and any(p.startswith("nodes: none") for p in r.json()["problems"])
    assert {name: models_of(base, name) for name in before} == before

    # Only an admin key may reload.
    assert httpx.post(base + "/admin/reload", headers=auth("app"), timeout=60).status_code == 403


def test_the_routers_server_process_logs_what_a_sighup_did_in_the_routers_format(cluster):
    base, write = cluster["base"], cluster["write"]
    write(["node-a"], [{"name": "chat"}], [key("app", models=["chat"]), key("ops", admin=True)])
    # The line the server process writes when it forwards a SIGHUP (gateway.http.server); the
    # router's process logged nothing at INFO before (its logging was never set up).
    line = re.compile(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO gateway: SIGHUP: \{"reloaded":true', re.MULTILINE)
    before = len(line.findall(cluster["log"].read_text(errors="replace")))
    cluster["proc"].send_signal(signal.SIGHUP)
    wait_until(
        lambda: len(line.findall(cluster["log"].read_text(errors="replace"))) > before, timeout=60, what="the SIGHUP line in the router's log"
    )
    assert models_of(base, "app") == ["chat"]
