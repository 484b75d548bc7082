"""Per-request accounting: one metrics record and one log line per request."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.observability.logs import log_request
from gateway.observability.metrics import GatewayMetrics

REQUEST_ID_HEADER = "X-Request-Id"


@dataclass
class RequestRecord:
    """What one request did, filled in as it goes; ``finish`` records it exactly once."""

    endpoint: str
    request_id: str
    started: float = field(default_factory=time.monotonic)
    model: str | None = None
    done: bool = False

    def finish(
        self,
        metrics: GatewayMetrics,
        status: int,
        *,
        ttft_s: float | None = None,
        usage: dict[str, Any] | None = None,
    ) -> None:
        """Record the request; ``ttft_s`` counts from its arrival at the gateway."""
        if self.done:
            return
        self.done = True
        duration = time.monotonic() - self.started
        prompt = (usage or {}).get("prompt_tokens")
        completion = (usage or {}).get("completion_tokens")
        metrics.request_finished(self.model, self.endpoint, status, duration, ttft_s, prompt, completion)
        log_request(
            request_id=self.request_id,
            model=self.model,
            endpoint=self.endpoint,
            status=status,
            duration_s=duration,
            ttft_s=ttft_s,
            prompt_tokens=prompt,
            completion_tokens=completion,
        )


def new_record(endpoint: str, request_id: str | None) -> RequestRecord:
    """A record for a request; a client's X-Request-Id is kept (trimmed) so logs join up."""
    rid = (request_id or "").strip()[:128] or uuid.uuid4().hex
    return RequestRecord(endpoint=endpoint, request_id=rid)

