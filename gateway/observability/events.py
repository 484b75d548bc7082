"""What the pool's events mean for the console and the metrics."""

from __future__ import annotations

import logging

from gateway.observability.metrics import GatewayMetrics
from gateway.runtime.events import (
    Added,
    Crashed,
    Evicted,
    Failed,
    Loading,
    LoadWaited,
    ModelEvent,
    Progress,
    Ready,
    Restarting,
    Starting,
    Stats,
    Stopped,
)

log = logging.getLogger("gateway")

PROGRESS_STEP = 25  # the console shows each load in quarters, whatever percentages arrive


class EventLog:
    """The pool's ``on_event``: console lines and metrics for each model event."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._shown: dict[str, int] = {}

    def __call__(self, event: ModelEvent) -> None:
        m = self._metrics
        match event:
            case Progress(model=model, percent=percent):
                step = percent // PROGRESS_STEP
                if step > self._shown.get(model, -1):
                    self._shown[model] = step
                    log.info("model %s: loading %d%%", model, percent)
            case Starting(model=model, pid=pid):
                self._shown.pop(model, None)
                log.info("model %s: starting (pid %s)", model, pid)
            case Ready(model=model, load_seconds=seconds):
                log.info("model %s: ready (loaded in %.1f s)", model, seconds or 0.0)
                if seconds is not None:
                    m.model_loaded(model, float(seconds))
            case Failed(model=model, reason=reason):
                log.error("model %s: failed: %s", model, reason)
            case Restarting(model=model):
                m.worker_restarted(model)
            case Loading(model=model, reason=reason):
                m.model_load_started(model, reason)
            case Evicted(model=model, reason=reason):
                m.model_evicted(model, reason)
            case LoadWaited(model=model, seconds=seconds):
                m.load_waited(model, seconds)
            case Added(model=model):
                m.add_model(model)
            case Stats(model=model, stats=stats):
                m.engine_stats(model, stats)
            case Crashed() | Stopped():
                pass  # the pool logs a crash with its restart; a stop was asked for
            case _:
                raise TypeError(f"no handler for model event {event!r} (gateway.runtime.events)")
