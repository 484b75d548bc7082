"""`gateway serve --router` in front of three real gateways on loopback playing the nodes: one
serves the real Gemma 3 270M, two serve tiny models on a declared GPU inventory (the engines run
on the CPU). Routing by model, the least-busy replica, streaming through, the merged model list,
metrics, and failover and 503 once a node is killed (those tests come last)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
import tomli_w

from testkit.ggufmaker import write_tiny_llama
from testkit.serving import HANG_S, free_port, kill_group, queue_running, spawn, wait_until, wait_until_answering, worker_held

pytestmark = pytest.mark.llama

CLIENT_KEY = "client-key"
INTERNAL_KEY = "internal-key"
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
# Often enough that a test waits well under a second for the router to see a change.
POLL_S = 0.2
# A streamed generation on only-b that cannot end by itself in the instant between its first
# event reaching the client and the test holding the node's worker (its context, 8192, has room).
LONG = 8000


def _node_config(port: int, models: list[dict], declared: bool) -> dict:
    doc: dict = {"gateway": {"port": port, "api_keys": [INTERNAL_KEY], "request_timeout_s": 30}, "models": models}
    if declared:
        doc["planner"] = {"gpus": ["2GiB"], "reserve_mib": 0, "min_budget_mib": 0}
    return doc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, gemma_path):
    tmp = tmp_path_factory.mktemp("router")
    tiny = write_tiny_llama(tmp / "tiny.gguf", n_layers=2, n_embd=64, ctx=8192)
    tiny_model = {"name": "tiny", "path": str(tiny), "n_ctx": 8192, "queue_size": 4}
    gemma = {"name": "gemma", "path": str(gemma_path), "chat_format": "gemma", "n_ctx": 512, "flash_attn": True}
    nodes = {
        "node-a": ([gemma], False),
        "node-b": ([tiny_model, {"name": "only-b", "path": str(tiny), "n_ctx": 8192}], True),
        "node-c": ([tiny_model, {"name": "only-c", "path": str(tiny), "n_ctx": 8192}], True),
    }
    ports = {name: free_port() for name in nodes}
    procs: dict = {}
    try:
        for name, (models, declared) in nodes.items():
            cfg = tmp / f"{name}.toml"
            cfg.write_text(tomli_w.dumps(_node_config(ports[name], models, declared)))
            procs[name] = spawn(["serve", "--config", str(cfg)], tmp / f"{name}.log")
        for name, proc in procs.items():
            wait_until_answering(f"http://127.0.0.1:{ports[name]}", proc, tmp / f"{name}.log", timeout=120)
        router_port = free_port()
        cluster_doc = {
            "gateway": {"port": router_port, "api_keys": [CLIENT_KEY], "internal_api_key": INTERNAL_KEY},
            "router": {"poll_interval_s": POLL_S, "poll_timeout_s": 1.0},
            "nodes": [{"name": n, "gpus": ["2GiB"], "url": f"http://127.0.0.1:{ports[n]}"} for n in nodes],
            "models": [
                {"name": "gemma", "path": str(gemma_path)},
                {"name": "tiny", "path": str(tiny), "replicas": 2},
                {"name": "only-b", "path": str(tiny)},
                {"name": "only-c", "path": str(tiny)},
                # Configured, but no node serves it.
                {"name": "nowhere", "path": str(tiny)},
            ],
        }
        cfg = tmp / "cluster.toml"
        cfg.write_text(tomli_w.dumps(cluster_doc))
        procs["router"] = spawn(["serve", "--router", str(cfg)], tmp / "router.log")
        base = f"http://127.0.0.1:{router_port}"
        wait_until_answering(base, procs["router"], tmp / "router.log", timeout=60)
        yield {"base": base, "nodes": {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}, "procs": procs, "tmp": tmp}
    finally:
        for proc in procs.values():
            kill_group(proc)


def complete(base: str, model: str, headers=AUTH, **extra) -> httpx.Response:
    body = {"model": model, "prompt": "a", "max_tokens": 4, "logit_bias": {"97": 50}, **extra}
    return httpx.post(base + "/v1/completions", json=body, headers=headers, timeout=60)


def node_of(r: httpx.Response) -> str:
    return r.headers["x-gateway-node"]


def wait_for(check, timeout: float = HANG_S) -> None:
    """Poll ``check`` until true; the bound only guards against a hang (a busy CI machine, two
    cores at load 8, can take many seconds for what takes milliseconds here)."""
    wait_until(check, timeout=timeout)


def test_each_request_goes_to_a_node_that_serves_its_model(cluster):
    base = cluster["base"]
    for model, node in (("only-b", "node-b"), ("only-c", "node-c")):
        r = complete(base, model)
        assert r.status_code == 200, r.text
        assert node_of(r) == node and r.json()["model"] == model
    r = httpx.post(
        base + "/v1/chat/completions",
        json={"model": "gemma", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4},
        headers=AUTH,
        timeout=60,
    )
    assert r.status_code == 200 and node_of(r) == "node-a"
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


def test_clients_need_the_routers_key_and_nodes_take_only_the_internal_key(cluster):
    assert complete(cluster["base"], "only-b", headers={}).status_code == 401
    # A client's key opens the router, not a node.
    assert complete(cluster["nodes"]["node-b"], "only-b").status_code == 401
    assert complete(cluster["nodes"]["node-b"], "only-b", headers={"Authorization": f"Bearer {INTERNAL_KEY}"}).status_code == 200


def test_the_model_list_merges_the_nodes_with_where_each_model_runs(cluster):
    r = httpx.get(cluster["base"] + "/v1/models", headers=AUTH, timeout=10)
    data = {m["id"]: m for m in r.json()["data"]}
    assert [n["node"] for n in data["tiny"]["nodes"]] == ["node-b", "node-c"]
    assert [n["node"] for n in data["gemma"]["nodes"]] == ["node-a"]
    assert data["gemma"]["state"] == "ready" and data["tiny"]["replicas"] == 2
    assert data["nowhere"]["nodes"] == [] and data["nowhere"]["state"] == "unavailable"
    assert data["gemma"]["nodes"][0]["planned"]["cuda_visible_devices"] == ""  # the node's own entry


def _node_closed_requests(node: str, model: str) -> float:
    """The node's count of requests for ``model`` that their client closed (499)."""
    text = httpx.get(node + "/metrics", headers={"Authorization": f"Bearer {INTERNAL_KEY}"}, timeout=10).text
    for line in text.splitlines():
        if line.startswith("vram_gateway_requests_total{") and f'model="{model}"' in line and 'status="499"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _events(r: httpx.Response) -> Iterator[str]:
    """The stream's ``data:`` lines as they come."""
    return (line for line in r.iter_lines() if line.startswith("data: "))


def test_a_streamed_generation_comes_through_as_the_node_makes_it(cluster):
    base, node = cluster["base"], cluster["nodes"]["node-b"]
    internal = {"Authorization": f"Bearer {INTERNAL_KEY}"}
    closed_before = _node_closed_requests(node, "only-b")
    body = {"model": "gemma", "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0, "stream": True}
    # The same events as straight from the node.
    direct = httpx.post(cluster["nodes"]["node-a"] + "/v1/completions", json=body, headers=internal, timeout=60)
    with httpx.stream("POST", base + "/v1/completions", json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        pieces = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert pieces[-1] == "data: [DONE]"

    def texts(lines: list[str]) -> list[str]:
        return [json.loads(line[6:])["choices"][0]["text"] for line in lines if line != "data: [DONE]"]

    assert texts(pieces) == texts([line for line in direct.text.splitlines() if line.startswith("data: ")])

    # Token by token: a buffering proxy would hand the first event over only with the rest. Here
    # the client has it while the node still generates: once it has come, the node's worker is
    # held, and the generation is still there, unfinished, holding its slot.
    long = {"model": "only-b", "prompt": "a", "max_tokens": LONG, "logit_bias": {"97": 50}, "stream": True}
    with httpx.stream("POST", base + "/v1/completions", json=long, headers=AUTH, timeout=HANG_S) as r:
        events = _events(r)  # kept: an iterator dropped midway closes the stream
        first = next(events)
        with worker_held(node, "only-b", internal):
            running = queue_running(node, "only-b", internal)
    assert json.loads(first[6:])["choices"][0]["text"] == "a"
    assert running == 1
    # The client left: the node lets the generation go (test_a_client_that_goes_away_...), and
    # counts it, before the next test counts its own.
    wait_for(lambda: queue_running(node, "only-b", internal) == 0)
    wait_for(lambda: _node_closed_requests(node, "only-b") == closed_before + 1)


def test_the_least_busy_replica_gets_the_request(cluster):
    base, node_b = cluster["base"], cluster["nodes"]["node-b"]
    internal = {"Authorization": f"Bearer {INTERNAL_KEY}"}
    hold = {"model": "tiny", "prompt": "a", "max_tokens": 8000, "logit_bias": {"97": 50}, "stream": True}
    stop = threading.Event()

    def router_sees_only_b_running() -> bool:
        # The router's last poll of each node: node b running the held one, node c nothing (a
        # poll taken while c answered the previous request would still count that one).
        models = httpx.get(base + "/v1/models", headers=AUTH, timeout=5).json()["data"]
        nodes = {n["node"]: n["queue"] for n in next(m for m in models if m["id"] == "tiny")["nodes"]}
        return nodes["node-b"]["running"] == 1 and nodes["node-c"]["running"] + nodes["node-c"]["waiting"] == 0

    def busy() -> None:
        # A generation straight on node b, read until the test is done with it; closing the
        # stream stops it on the node.
        with httpx.stream("POST", node_b + "/v1/completions", json=hold, headers=internal, timeout=60) as r:
            for _ in r.iter_raw():
                if stop.is_set():
                    break

    holder = threading.Thread(target=busy, daemon=True)
    answered: list[str] = []
    try:
        # Node b's worker is held still: the generation cannot end before the test is done,
        # however fast the machine is.
        with worker_held(node_b, "tiny", headers=internal):
            holder.start()
            wait_for(lambda: queue_running(node_b, "tiny", headers=internal) == 1)
            for _ in range(4):
                wait_for(router_sees_only_b_running)
                answered.append(node_of(complete(base, "tiny")))
            b_running_after = queue_running(node_b, "tiny", headers=internal)
    finally:
        stop.set()
        holder.join(30)
    assert answered == ["node-c"] * 4
    assert b_running_after == 1  # node b was busy for every one of them


def test_a_client_that_goes_away_stops_the_generation_on_the_node(cluster):
    node = cluster["nodes"]["node-b"]
    internal = {"Authorization": f"Bearer {INTERNAL_KEY}"}
    closed_before = _node_closed_requests(node, "only-b")
    body = {"model": "only-b", "prompt": "a", "max_tokens": LONG, "logit_bias": {"97": 50}, "stream": True}
    with contextlib.ExitStack() as held:
        with httpx.stream("POST", cluster["base"] + "/v1/completions", json=body, headers=AUTH, timeout=HANG_S) as r:
            events = _events(r)  # kept: an iterator dropped midway closes the stream
            for _ in range(3):
                next(events)  # a few events...
            # ...then the node's worker is held, so the generation cannot end by itself while the
            # test looks, however fast the machine; it runs, unfinished...
            held.enter_context(worker_held(node, "only-b", internal))
            assert queue_running(node, "only-b", internal) == 1
        # ...when the client hangs up: the router closes its stream from the node, which lets the
        # generation go (its slot free, recorded there as closed by its client) while the worker
        # is still held.
        wait_for(lambda: queue_running(node, "only-b", internal) == 0)
        wait_for(lambda: _node_closed_requests(node, "only-b") == closed_before + 1)
    assert complete(cluster["base"], "only-b").status_code == 200


def test_a_client_that_leaves_a_whole_answer_stops_the_generation_on_the_node(cluster):
    # Issue 21, item 6, through the router: a non-streamed request whose client left kept its
    # slot on the node until the generation ended, because the router waited for the node's
    # answer without watching its client.
    node = cluster["nodes"]["node-b"]
    internal = {"Authorization": f"Bearer {INTERNAL_KEY}"}
    closed_before = _node_closed_requests(node, "only-b")
    body = json.dumps({"model": "only-b", "prompt": "a", "max_tokens": 200, "logit_bias": {"97": 50}}).encode()
    host, port = cluster["base"].removeprefix("http://").split(":")
    # The node's worker is held, so the request cannot end by itself however fast the machine.
    with worker_held(node, "only-b", internal):
        client = socket.create_connection((host, int(port)))
        client.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
            + b"Authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n"
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        wait_for(lambda: queue_running(node, "only-b", internal) == 1)
        client.close()
        # The router closes its connection to the node, which cancels the generation: recorded
        # there as closed by its client while the worker is still held.
        wait_for(lambda: _node_closed_requests(node, "only-b") == closed_before + 1)
    wait_for(lambda: queue_running(node, "only-b", internal) == 0)
    assert complete(cluster["base"], "only-b").status_code == 200


def router_idle(base: str) -> bool:
    """No request in flight through the router, and a poll of the nodes since (the one before
    may still count a stream that an earlier test's client left)."""
    text = httpx.get(base + "/metrics", timeout=10).text
    busy = [l for l in text.splitlines() if l.startswith("vram_gateway_router_in_flight{") and not l.endswith(" 0.0")]
    return not busy


def router_sees_tiny_idle(base: str) -> bool:
    """The router's last poll of both tiny replicas shows nothing running or waiting."""
    models = httpx.get(base + "/v1/models", headers=AUTH, timeout=10).json()["data"]
    nodes = next(m for m in models if m["id"] == "tiny")["nodes"]
    return all(n["queue"]["running"] == 0 and n["queue"]["waiting"] == 0 for n in nodes)


def test_equal_replicas_share_the_requests(cluster):
    # A node still busy with an earlier test's cancelled stream is rightly less preferred.
    wait_for(lambda: router_idle(cluster["base"]))
    wait_for(lambda: router_sees_tiny_idle(cluster["base"]))
    answered = {node_of(complete(cluster["base"], "tiny")) for _ in range(6)}
    assert answered == {"node-b", "node-c"}


def test_a_model_no_node_serves_is_a_503_and_an_unknown_one_a_404(cluster):
    r = complete(cluster["base"], "nowhere")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "model_unavailable"
    assert r.json()["error"]["message"] == "model 'nowhere' is not served by any node that answers"
    r = complete(cluster["base"], "nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_router_metrics_count_requests_per_node_and_model(cluster):
    complete(cluster["base"], "only-c")
    text = httpx.get(cluster["base"] + "/metrics", timeout=10).text
    assert 'vram_gateway_router_requests_total{model="only-c",node="node-c",status="200"}' in text
    assert 'vram_gateway_router_requests_total{model="nowhere",node="",status="503"}' in text
    assert 'vram_gateway_router_node_up{node="node-a"} 1.0' in text


# ---------------------------------------------------------------- a node dies (keep these last)


def test_when_a_node_is_killed_its_requests_go_to_the_other_replica(cluster):
    kill_group(cluster["procs"]["node-c"])
    # At once, before any poll has noticed: the refused connection hands the request on.
    answered = [complete(cluster["base"], "tiny") for _ in range(4)]
    assert [r.status_code for r in answered] == [200] * 4
    assert {node_of(r) for r in answered} == {"node-b"}
    wait_for(lambda: httpx.get(cluster["base"] + "/health", timeout=5).json()["nodes"]["node-c"]["up"] is False)
    health = httpx.get(cluster["base"] + "/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "degraded"


def test_a_model_whose_only_node_died_is_a_503_that_says_why(cluster):
    r = complete(cluster["base"], "only-c")
    assert r.status_code == 503
    message = r.json()["error"]["message"]
    assert message.startswith("model 'only-c': no node can take it now: node node-c: down (")
    models = {m["id"]: m for m in httpx.get(cluster["base"] + "/v1/models", headers=AUTH, timeout=10).json()["data"]}
    assert [(n["node"], n["up"]) for n in models["tiny"]["nodes"]] == [("node-b", True), ("node-c", False)]
