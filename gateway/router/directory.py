"""What the router knows about the nodes: who serves which model, how busy, who is down.

``Directory`` is plain state with an injected clock; the app feeds it the nodes' /v1/models
answers (``update``) and failures (``mark_down``), and asks it where a request should go
(``candidates``). Nothing here does I/O, so the routing rules are tested without a network.

Rules:
- a model is routable on a node when the node answered its last poll and lists the model in a
  state that can take a request (ready, or stopped/starting: an on-demand model loads for it);
- among those, the least busy first: the larger of the router's own requests in flight there
  and the node's last reported running + waiting, per engine (``max_concurrency``); ready before
  loading; then the node with fewer requests from this router in all; ties take turns;
- a node that refuses a connection or times out is down until a poll succeeds again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.cluster.naming import node_url
from gateway.config.names import ModelNames
from gateway.config.schema import Config
from gateway.errors import ModelUnavailableError
from gateway.placement.facts import MODEL_CARD_FIELDS

# States (gateway.runtime.states) in which a node's model can take a request now or after
# loading; "failed" and "stopping" cannot.
SERVING_STATES = frozenset({"ready", "starting", "stopped"})


@dataclass
class NodeModel:
    """One model as a node's last /v1/models answer described it."""

    state: str
    reason: str | None
    running: int
    waiting: int
    max_concurrency: int
    entry: dict[str, Any]  # the node's whole entry, shown in the router's /v1/models


@dataclass
class NodeState:
    name: str
    url: str
    up: bool = False
    reason: str = "not polled yet"
    polled: bool = False  # a poll has answered or failed (the first failure is logged too)
    since: float = 0.0  # when ``up`` last changed (monotonic)
    models: dict[str, NodeModel] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)  # this router's requests, per model

    @property
    def total_in_flight(self) -> int:
        return sum(self.in_flight.values())


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class Directory:
    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.config = config
        self.nodes: dict[str, NodeState] = {
            n.name: NodeState(n.name, node_url(n), since=clock()) for n in config.nodes or ()
        }
        self._names = ModelNames(config)
        self._models = {m.name: m for m in config.models}
        self._turn: dict[str, int] = {}

    def reconfigure(self, config: Config) -> None:
        """A reloaded cluster config: nodes and models as it lists them.

        A node kept at the same address keeps what its last poll said and its requests in
        flight; a new node, or one given a new address, is not polled yet (the app polls it
        at once). A removed node is forgotten: requests already sent there finish on their own
        ``NodeState``. What a node serves is filtered to the new model list at once; a model the
        new config adds becomes routable with the node's next poll."""
        now = self._clock()
        nodes: dict[str, NodeState] = {}
        for n in config.nodes or ():
            kept = self.nodes.get(n.name)
            url = node_url(n)
            nodes[n.name] = kept if kept is not None and kept.url == url else NodeState(n.name, url, since=now)
        models = {m.name: m for m in config.models}
        for node in nodes.values():
            node.models = {name: m for name, m in node.models.items() if name in models}
        self.config, self.nodes = config, nodes
        self._names = ModelNames(config)
        self._models = models
        self._turn = {m: t for m, t in self._turn.items() if m in models}

    # ------------------------------------------------------------------ names

    def resolve(self, requested: Any) -> str:
        """A request's ``model`` as the configured name: the same rule as one gateway."""
        return self._names.resolve(requested)

    @property
    def model_names(self) -> list[str]:
        return list(self._models)

    # ------------------------------------------------------------------ what the nodes say

    def update(self, node: str, listing: Any) -> None:
        """A node's /v1/models answer: it is up, and serves what it lists."""
        state = self.nodes[node]
        state.polled = True
        data = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            self.mark_down(node, "its /v1/models answer has no model list")
            return
        models: dict[str, NodeModel] = {}
        for entry in data:
            if not isinstance(entry, dict) or entry.get("id") not in self._models:
                continue  # a model this cluster does not configure: never routed to
            queue = entry.get("queue") if isinstance(entry.get("queue"), dict) else {}
            models[entry["id"]] = NodeModel(
                state=str(entry.get("state", "")),
                reason=entry.get("reason") if isinstance(entry.get("reason"), str) else None,
                running=_int(queue.get("running")),
                waiting=_int(queue.get("waiting")),
                max_concurrency=max(1, _int(queue.get("max_concurrency"), 1)),
                entry=entry,
            )
        state.models = models
        if not state.up:
            state.up, state.since = True, self._clock()
        state.reason = "answering"

    def mark_down(self, node: str, reason: str) -> None:
        """A failed poll or connection: skip the node until a poll succeeds. What it served is
        kept, to say where a model would have run."""
        state = self.nodes[node]
        if state.up:
            state.since = self._clock()
        state.up, state.reason, state.polled = False, reason, True

    # ------------------------------------------------------------------ choosing

    def _load(self, node: NodeState, model: str) -> float:
        m = node.models[model]
        return max(node.in_flight.get(model, 0), m.running + m.waiting) / m.max_concurrency

    def candidates(self, model: str) -> list[NodeState]:
        """The nodes that can take a request for ``model`` now, the best first."""
        usable = [n for n in self.nodes.values() if n.up and model in n.models and n.models[model].state in SERVING_STATES]
        if not usable:
            return []
        turn = self._turn.get(model, 0)
        self._turn[model] = turn + 1
        order = {n.name: k for k, n in enumerate(usable)}

        def key(n: NodeState) -> tuple:
            return (
                n.models[model].state != "ready",
                self._load(n, model),
                n.total_in_flight,
                (order[n.name] - turn) % len(usable),  # equal nodes take turns
            )

        return sorted(usable, key=key)

    def unavailable(self, model: str) -> ModelUnavailableError:
        """Why no node can take ``model`` now: each node that served it, and what is wrong there."""
        now = self._clock()
        why = []
        for n in self.nodes.values():
            if model not in n.models:
                continue
            if not n.up:
                why.append(f"node {n.name}: down ({n.reason}, for {now - n.since:.0f} s)")
            else:
                m = n.models[model]
                why.append(f"node {n.name}: {m.state}" + (f" ({m.reason})" if m.reason else ""))
        if not why:
            down = [f"{n.name} ({n.reason})" for n in self.nodes.values() if not n.up]
            tail = f"; nodes not answering: {', '.join(down)}" if down else ""
            return ModelUnavailableError(f"model {model!r} is not served by any node that answers{tail}")
        return ModelUnavailableError(f"model {model!r}: no node can take it now: {'; '.join(why)}")

    # ------------------------------------------------------------------ in flight

    def started(self, node: NodeState, model: str) -> None:
        node.in_flight[model] = node.in_flight.get(model, 0) + 1

    def finished(self, node: NodeState, model: str) -> None:
        node.in_flight[model] = max(0, node.in_flight.get(model, 0) - 1)

    # ------------------------------------------------------------------ views

    def describe(self, model: str) -> dict[str, Any]:
        """A merged /v1/models entry: OpenAI's fields, then every node that serves the model."""
        cfg = self._models[model]
        where = []
        for n in self.nodes.values():
            m = n.models.get(model)
            if m is None:
                continue
            node_entry = {k: v for k, v in m.entry.items() if k not in ("id", "object", "owned_by", "aliases")}
            where.append({"node": n.name, "up": n.up, **node_entry, "router_in_flight": n.in_flight.get(model, 0)})
        routable = [w for w in where if w["up"] and w.get("state") in SERVING_STATES]
        if any(w.get("state") == "ready" for w in routable):
            state = "ready"
        elif routable:
            state = str(routable[0].get("state"))
        else:
            state = "unavailable"
        created = min((int(w["created"]) for w in where if isinstance(w.get("created"), int)), default=0)
        return {
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "vram-gateway",
            "aliases": list(cfg.aliases),
            "state": state,
            **_card(routable + [w for w in where if w not in routable]),
            "replicas": cfg.replicas or 1,
            "nodes": where,
        }

    def health(self) -> tuple[str, bool, dict[str, Any]]:
        """(status, serving, per node): serving while some model has a node that can take it."""
        nodes = {
            n.name: {"up": n.up, "reason": n.reason, "models": sorted(n.models)} for n in self.nodes.values()
        }
        serving = any(self.candidates_exist(m) for m in self._models)
        up = sum(1 for n in self.nodes.values() if n.up)
        status = "unavailable" if not serving else ("ok" if up == len(self.nodes) else "degraded")
        return status, serving, nodes

    def candidates_exist(self, model: str) -> bool:
        return any(n.up and n.models.get(model) is not None and n.models[model].state in SERVING_STATES for n in self.nodes.values())


def _card(where: list[dict[str, Any]]) -> dict[str, Any]:
    """What a client chooses a model by (contexts, capabilities, file: ``MODEL_CARD_FIELDS``) at
    the top of the router's entry, as a single gateway's: each field from the first node, in
    ``where``'s order (routable nodes first), that reports it; None where none does (every node
    down, or one too old to send it). The nodes run the same config, so they agree on these."""
    card: dict[str, Any] = {}
    for key in MODEL_CARD_FIELDS:
        card[key] = next((w[key] for w in where if w.get(key) is not None), None)
    return card
