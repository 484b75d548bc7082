"""The router's directory of nodes: names, what the nodes report, the least-busy choice."""

from __future__ import annotations

import pytest

from gateway.config.loading import parse_config
from gateway.config.schema import ModelConfig
from gateway.placement.facts import MODEL_CARD_FIELDS, model_card
from gateway.errors import InvalidRequestError, ModelNotFoundError
from gateway.router.directory import Directory

CLUSTER = """
[gateway]
default_model = "chat"

[[nodes]]
name = "a"
gpus = ["24GiB"]
url = "http://127.0.0.1:1"

[[nodes]]
name = "b"
gpus = ["24GiB"]

[[nodes]]
name = "c"
gpus = ["24GiB"]

[[models]]
name = "chat"
path = "/m/chat.gguf"
aliases = ["default"]
replicas = 3

[[models]]
name = "code"
path = "/m/code.gguf"
"""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def directory(clock) -> Directory:
    return Directory(parse_config(CLUSTER, environ={}), clock)


def listing(*models: tuple[str, str, int, int, int]) -> dict:
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "state": state, "reason": None, "queue": {"running": running, "waiting": waiting, "max_concurrency": mc, "queue_size": 16}}
            for name, state, running, waiting, mc in models
        ],
    }


def test_node_addresses_are_their_url_or_the_service_render_writes(directory):
    assert directory.nodes["a"].url == "http://127.0.0.1:1"
    assert directory.nodes["b"].url == "http://vram-gateway-node-b:8080"


def test_names_resolve_like_one_gateway(directory):
    assert directory.resolve("chat") == "chat"
    assert directory.resolve("default") == "chat"
    assert directory.resolve(None) == "chat"  # default_model
    with pytest.raises(ModelNotFoundError) as exc:
        directory.resolve("nope")
    assert exc.value.known == ["chat", "code", "default"]
    with pytest.raises(InvalidRequestError):
        directory.resolve(5)


def test_a_node_is_unknown_until_it_answers(directory):
    assert directory.candidates("chat") == []
    assert "not served by any node that answers" in str(directory.unavailable("chat"))


def test_the_least_busy_replica_comes_first(directory):
    directory.update("a", listing(("chat", "ready", 1, 2, 1)))
    directory.update("b", listing(("chat", "ready", 0, 0, 1)))
    directory.update("c", listing(("chat", "ready", 1, 0, 1)))
    assert [n.name for n in directory.candidates("chat")] == ["b", "c", "a"]


def test_load_is_counted_per_engine(directory):
    # Two running on four engines is less busy than one on one.
    directory.update("a", listing(("chat", "ready", 2, 0, 4)))
    directory.update("b", listing(("chat", "ready", 1, 0, 1)))
    assert [n.name for n in directory.candidates("chat")][0] == "a"


def test_the_routers_own_requests_count_before_the_next_poll(directory):
    directory.update("a", listing(("chat", "ready", 0, 0, 1)))
    directory.update("b", listing(("chat", "ready", 0, 0, 1)))
    first = directory.candidates("chat")[0]
    directory.started(first, "chat")
    assert directory.candidates("chat")[0] is not first
    directory.finished(first, "chat")
    assert first.in_flight["chat"] == 0


def test_equal_replicas_take_turns(directory):
    for n in "abc":
        directory.update(n, listing(("chat", "ready", 0, 0, 1)))
    firsts = [directory.candidates("chat")[0].name for _ in range(6)]
    assert sorted(firsts) == ["a", "a", "b", "b", "c", "c"]


def test_a_ready_replica_beats_one_that_must_load_first(directory):
    directory.update("a", listing(("chat", "stopped", 0, 0, 1)))
    directory.update("b", listing(("chat", "ready", 3, 5, 1)))
    assert [n.name for n in directory.candidates("chat")] == ["b", "a"]


def test_failed_models_and_down_nodes_are_skipped_and_explained(directory, clock):
    directory.update("a", listing(("chat", "failed", 0, 0, 1)))
    directory.update("b", listing(("chat", "ready", 0, 0, 1)))
    directory.update("c", listing(("chat", "ready", 0, 0, 1)))
    clock.now += 5
    directory.mark_down("b", "ConnectError: refused")
    directory.nodes["a"].models["chat"].reason = "out of memory"
    clock.now += 3
    assert [n.name for n in directory.candidates("chat")] == ["c"]
    directory.mark_down("c", "ReadTimeout")
    message = str(directory.unavailable("chat"))
    assert message == (
        "model 'chat': no node can take it now: node a: failed (out of memory); "
        "node b: down (ConnectError: refused, for 3 s); node c: down (ReadTimeout, for 0 s)"
    )


def test_a_node_comes_back_with_its_next_answer(directory):
    directory.update("a", listing(("chat", "ready", 0, 0, 1)))
    directory.mark_down("a", "ConnectError")
    assert directory.candidates("chat") == []
    directory.update("a", listing(("chat", "ready", 0, 0, 1)))
    assert [n.name for n in directory.candidates("chat")] == ["a"]


def test_models_the_cluster_does_not_configure_are_never_routed_to(directory):
    directory.update("a", listing(("stranger", "ready", 0, 0, 1), ("code", "ready", 0, 0, 1)))
    assert set(directory.nodes["a"].models) == {"code"}


def test_a_malformed_answer_marks_the_node_down(directory):
    directory.update("a", listing(("chat", "ready", 0, 0, 1)))
    directory.update("a", {"data": "nope"})
    assert not directory.nodes["a"].up


def test_the_merged_entry_lists_every_node_that_serves_the_model(directory):
    directory.update("a", listing(("chat", "ready", 1, 0, 1)))
    directory.update("b", listing(("chat", "starting", 0, 0, 1)))
    directory.mark_down("b", "ConnectError")
    entry = directory.describe("chat")
    assert (entry["id"], entry["state"], entry["replicas"], entry["aliases"]) == ("chat", "ready", 3, ["default"])
    assert [(w["node"], w["up"], w["state"]) for w in entry["nodes"]] == [("a", True, "ready"), ("b", False, "starting")]
    assert entry["nodes"][0]["queue"]["running"] == 1
    assert directory.describe("code")["state"] == "unavailable"


def test_health_serves_while_some_model_has_a_node(directory):
    assert directory.health()[:2] == ("unavailable", False)
    directory.update("a", listing(("code", "ready", 0, 0, 1)))
    status, serving, nodes = directory.health()
    assert (status, serving) == ("degraded", True)
    assert nodes["a"] == {"up": True, "reason": "answering", "models": ["code"]}


def test_the_merged_entry_carries_what_a_client_chooses_a_model_by_from_its_nodes(directory):
    card = {
        "n_ctx": 4096,
        "context_length": 32768,
        "capabilities": {"completion": True, "chat": True, "embeddings": False, "tools": True},
        "chat_format": "chatml",
        "architecture": "llama",
        "n_params": 270_000_000,
        "file_bytes": 253_000_000,
        "quantization": "Q4_K_M",
    }
    down = listing(("chat", "ready", 0, 0, 1))
    down["data"][0].update(card, context_length=None, file_bytes=1)  # a node whose file is unread, now down
    directory.update("a", down)
    directory.mark_down("a", "ConnectError")
    up = listing(("chat", "ready", 0, 0, 1))
    up["data"][0].update(card)
    directory.update("b", up)
    entry = directory.describe("chat")
    assert {k: entry[k] for k in card} == card  # the routable node's, as a single gateway's entry
    assert [(w["node"], w["file_bytes"]) for w in entry["nodes"]] == [("a", 1), ("b", 253_000_000)]
    # No node reports them (none polled yet): the fields are there, null.
    assert {k: directory.describe("code")[k] for k in card} == dict.fromkeys(card)


def test_the_router_lifts_every_field_of_a_nodes_model_card():
    assert tuple(model_card(ModelConfig(name="m", path="/m.gguf"), None)) == MODEL_CARD_FIELDS


def test_a_reloaded_config_adds_and_removes_nodes_and_keeps_what_kept_nodes_said(directory, clock):
    directory.update("a", listing(("chat", "ready", 0, 0, 1), ("code", "ready", 0, 0, 1)))
    directory.update("b", listing(("chat", "ready", 0, 0, 1)))
    directory.started(directory.nodes["a"], "chat")
    clock.now = 200.0
    new = CLUSTER.replace('name = "b"', 'name = "d"').replace('name = "code"', 'name = "docs"')
    new = new.replace('url = "http://127.0.0.1:1"', 'url = "http://127.0.0.1:1"', 1)
    directory.reconfigure(parse_config(new, environ={}))
    assert list(directory.nodes) == ["a", "d", "c"]
    a = directory.nodes["a"]
    # Kept: up, its in-flight count; what it served is cut to the new model list at once.
    assert a.up and a.in_flight == {"chat": 1} and list(a.models) == ["chat"]
    assert not directory.nodes["d"].up and directory.nodes["d"].reason == "not polled yet" and directory.nodes["d"].since == 200.0
    assert directory.model_names == ["chat", "docs"] and [n.name for n in directory.candidates("chat")] == ["a"]
    directory.update("d", listing(("docs", "ready", 0, 0, 1)))
    assert [n.name for n in directory.candidates("docs")] == ["d"]


def test_a_node_given_a_new_address_is_polled_again_from_scratch(directory):
    directory.update("a", listing(("chat", "ready", 0, 0, 1)))
    directory.reconfigure(parse_config(CLUSTER.replace("127.0.0.1:1", "127.0.0.1:2"), environ={}))
    a = directory.nodes["a"]
    assert a.url == "http://127.0.0.1:2" and not a.up and a.models == {}
