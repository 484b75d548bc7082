"""A GatewayMetrics with every series present: two models on a declared two-GPU inventory and
some recorded traffic. Shared by the metrics, dashboard and Prometheus tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.engine.protocol import Stats
from gateway.observability.metrics import GatewayMetrics, ModelSnapshot
from planner.devices import declared_devices

GIB = 1024**3
MIB = 1024**2

SNAPSHOTS = [
    ModelSnapshot(
        name="chat",
        state="ready",
        waiting=3,
        running=2,
        max_concurrency=2,
        queue_size=16,
        planned_bytes={0: 6 * GIB, 1: 2 * GIB},
        allocated_bytes={0: 5 * GIB, 1: 1 * GIB},
        process_used_bytes={0: 6 * GIB + 100 * MIB, 1: 2 * GIB - 50 * MIB},
        measured_bytes={0: 6 * GIB + 100 * MIB, 1: 2 * GIB - 50 * MIB},
        plan_error_bytes={0: 100 * MIB, 1: -50 * MIB},
        learned_bytes=100 * MIB,
        slots=2,
        busy_slots=2,
    ),
    ModelSnapshot(name="embed", state="starting", max_concurrency=1, queue_size=4, planned_bytes={1: 1 * GIB}),
]


def sample_gpus():
    return declared_devices(["24GiB/20GiB", "12GiB/10GiB"])


def record_traffic(metrics: GatewayMetrics) -> None:
    """One request of each kind the dashboard plots: successes, errors, refusals, a restart, loads,
    an eviction, a load wait and a key's use."""
    for model in ("chat", "embed"):
        metrics.add_model(model)
    metrics.request_finished("chat", "/v1/chat/completions", 200, 2.5, ttft_s=0.5, prompt_tokens=40, completion_tokens=101)
    metrics.request_finished("chat", "/v1/completions", 200, 1.0, ttft_s=0.1, prompt_tokens=10, completion_tokens=19)
    metrics.request_finished("embed", "/v1/embeddings", 200, 0.08, prompt_tokens=12)
    metrics.request_finished("chat", "/v1/chat/completions", 500, 0.3)
    metrics.request_finished("chat", "/v1/chat/completions", 429, 0.001)
    metrics.rejected("chat", "queue_full")
    metrics.request_finished(None, "/v1/chat/completions", 404, 0.002)
    metrics.worker_restarted("chat")
    metrics.model_loaded("chat", 12.5)
    metrics.model_loaded("embed", 3.0)
    metrics.engine_stats("chat", Stats(busy_slots=2, slots=2, batch_sizes={2: 30, 130: 1}, cached_prompt_tokens=24))
    metrics.model_load_started("chat", "startup")
    metrics.model_load_started("embed", "on_demand")
    metrics.model_evicted("embed", "idle_ttl")
    metrics.load_waited("embed", 3.2)
    metrics.keys.add_keys(["alice"])
    metrics.keys.answered("alice", 200, 40, 101)
    metrics.keys.rejected("alice", "rate")


def sample_metrics() -> GatewayMetrics:
    metrics = GatewayMetrics(lambda: SNAPSHOTS, sample_gpus)
    record_traffic(metrics)
    return metrics


def exported_sample_names(metrics: GatewayMetrics) -> set[str]:
    """The series names Prometheus stores for this exposition (``_total``, ``_bucket``...)."""
    body, _ = metrics.render()
    return {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}
