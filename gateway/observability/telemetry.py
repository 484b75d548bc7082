"""Per-request accounting (one metrics record and one log line per request) and the model
snapshots the metrics read at scrape time."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.observability.logs import log_request
from gateway.observability.metrics import GatewayMetrics, ModelSnapshot
from planner.llama_log import llama_buffers_per_gpu
from gateway.runtime.pool import ModelPool
from gateway.runtime.view import ModelView

REQUEST_ID_HEADER = "X-Request-Id"
# The endpoint label of a request no route matched: one value, whatever the path.
UNMATCHED_ENDPOINT = "unmatched"


@dataclass
class RequestRecord:
    """What one request did, filled in as it goes; ``finish`` records it exactly once."""

    endpoint: str
    request_id: str
    started: float = field(default_factory=time.monotonic)
    model: str | None = None
    key: str | None = None  # the API key's name (never the key); None on a gateway without keys
    done: bool = False

    def finish(
        self,
        metrics: GatewayMetrics,
        status: int,
        *,
        ttft_s: float | None = None,
        usage: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Record the request; ``ttft_s`` counts from its arrival at the gateway; ``error`` is the
        text a failed request's client got (the page's "last error" of its model)."""
        if self.done:
            return
        self.done = True
        duration = time.monotonic() - self.started
        prompt = (usage or {}).get("prompt_tokens")
        completion = (usage or {}).get("completion_tokens")
        metrics.request_finished(self.model, self.endpoint, status, duration, ttft_s, prompt, completion, key=self.key)
        if self.model is not None:
            metrics.recent.record(self.model, completion if isinstance(completion, int) else None, status=status, error=error)
        log_request(
            request_id=self.request_id,
            model=self.model,
            key=self.key,
            endpoint=self.endpoint,
            status=status,
            duration_s=duration,
            ttft_s=ttft_s,
            prompt_tokens=prompt,
            completion_tokens=completion,
        )


def new_record(endpoint: str, request_id: str | None, key: str | None = None) -> RequestRecord:
    """A record for a request; a client's X-Request-Id is kept (trimmed) so logs join up."""
    rid = (request_id or "").strip()[:128] or uuid.uuid4().hex
    return RequestRecord(endpoint=endpoint, request_id=rid, key=key)


def model_snapshots(pool: ModelPool) -> list[ModelSnapshot]:
    """Every configured model as it is now, for the scrape-time metrics."""
    return [model_snapshot(v) for v in pool.views()]


def model_snapshot(view: ModelView) -> ModelSnapshot:
    """What the metrics show of a model: what its worker reports only while it is ready."""
    live = view.live
    return ModelSnapshot(
        name=view.name,
        state=view.state.value,
        waiting=view.waiting,
        running=view.running,
        max_concurrency=view.max_concurrency,
        queue_size=view.queue_size,
        planned_bytes=view.planned_bytes,
        allocated_bytes=llama_buffers_per_gpu(view.allocated, view.gpus) if live else {},
        process_used_bytes={int(k): int(v) for k, v in view.gpu_used_bytes.items()} if live else {},
        measured_bytes=dict(view.measured_bytes) if live else {},
        plan_error_bytes=view.plan_error_bytes if live else {},
        learned_bytes=view.learned_bytes,
        slots=view.slots if live else None,
        busy_slots=view.busy_slots if live else None,
    )
