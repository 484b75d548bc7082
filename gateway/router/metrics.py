"""The router's Prometheus series, in a registry of its own (like gateway.observability.metrics).

Per node and model: requests by status, their duration, requests in flight, and requests that a
node could not take and went to another replica (failovers, by reason). Per node: whether it
answers (evaluated at scrape time from the directory). Labels come from the cluster config
only: ``node`` is a [[nodes]] name or "" (answered by the router itself: unknown model, no node
for it, bad request); ``model`` is a configured name or "" (the request never named one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from gateway.observability.metrics import DURATION_BUCKETS, PREFIX, KeyMetrics

ROUTER_PREFIX = PREFIX + "router_"
NO_NODE = ""


class _NodesUp(Collector):
    def __init__(self, read: Callable[[], dict[str, bool]]) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(ROUTER_PREFIX + "node_up", "1 while the node answers the router's polls.", labels=["node"])
        for node, is_up in self._read().items():
            up.add_metric([node], 1.0 if is_up else 0.0)
        yield up


class RouterMetrics:
    def __init__(self, nodes_up: Callable[[], dict[str, bool]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self._requests = Counter(
            ROUTER_PREFIX + "requests", "Requests answered, by node, model and HTTP status.", ["node", "model", "status"], registry=r
        )
        self._duration = Histogram(
            ROUTER_PREFIX + "request_duration_seconds",
            "Seconds from a request's arrival at the router to its last byte, by node and model.",
            ["node", "model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._in_flight = Gauge(ROUTER_PREFIX + "in_flight", "Requests the router has sent to a node and not finished.", ["node", "model"], registry=r)
        self._failovers = Counter(
            ROUTER_PREFIX + "failovers",
            "Requests a node could not take (connect_error, node_unavailable, queue_full), tried on another replica.",
            ["node", "model", "reason"],
            registry=r,
        )
        r.register(_NodesUp(nodes_up))
        # The clients' keys are checked here, so their series are here, as on a gateway.
        self.keys = KeyMetrics(r)

    def started(self, node: str, model: str) -> None:
        self._in_flight.labels(node, model).inc()

    def ended(self, node: str, model: str) -> None:
        self._in_flight.labels(node, model).dec()

    def answered(
        self, node: str, model: str, status: int, seconds: float, key: str | None = None, usage: Mapping[str, Any] | None = None
    ) -> None:
        """One request answered (once, whatever replicas it tried): by ``node``, or NO_NODE;
        ``key``: the name of the client's key (None without keys), ``usage``: the node's."""
        self._requests.labels(node, model, str(status)).inc()
        self._duration.labels(node, model).observe(max(seconds, 0.0))
        usage = usage or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        self.keys.answered(key, status, prompt if isinstance(prompt, int) else None, completion if isinstance(completion, int) else None)

    def failover(self, node: str, model: str, reason: str) -> None:
        self._failovers.labels(node, model, reason).inc()

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
