"""What the pool's events mean for the console and the metrics."""

from __future__ import annotations

import logging
from typing import Any

from gateway.observability.metrics import GatewayMetrics

log = logging.getLogger("gateway")

PROGRESS_STEP = 25  # the console shows each load in quarters, whatever percentages arrive


class EventLog:
    """The pool's ``on_event``: console lines and metrics for each model event."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._shown: dict[str, int] = {}

    def __call__(self, name: str, event: dict[str, Any]) -> None:
        model = event.get("model")
        m = self._metrics
        if name == "progress":
            step = event["percent"] // PROGRESS_STEP
            if step > self._shown.get(model, -1):
                self._shown[model] = step
                log.info("model %s: loading %d%%", model, event["percent"])
        elif name == "starting":
            self._shown.pop(model, None)
            log.info("model %s: starting (pid %s)", model, event.get("pid"))
        elif name == "ready":
            log.info("model %s: ready (loaded in %.1f s)", model, event.get("load_seconds") or 0.0)
            if model is not None and event.get("load_seconds") is not None:
                m.model_loaded(model, float(event["load_seconds"]))
        elif name == "failed":
            log.error("model %s: failed: %s", model, event.get("reason"))
        elif model is None:
            return
        elif name == "restarting":
            m.worker_restarted(model)
        elif name == "loading":
            m.model_load_started(model, event["reason"])
        elif name == "evicted":
            m.model_evicted(model, event["reason"])
        elif name == "load_wait":
            m.load_waited(model, event["seconds"])
        elif name == "added":
            m.add_model(model)
        elif name == "stats":
            m.engine_stats(model, event)
