"""The pool's model events (gateway.runtime.events) as the console and the metrics take them
(gateway.observability.events): one type per event, every type handled."""

from __future__ import annotations

import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.engine import protocol
from gateway.observability.events import EventLog
from gateway.runtime.events import (
    MODEL_EVENTS,
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
from gateway.observability.metrics import GatewayMetrics

def empty_metrics() -> GatewayMetrics:
    return GatewayMetrics(lambda: [], lambda: [])


def scrape(metrics: GatewayMetrics) -> dict[tuple[str, frozenset], float]:
    body, _ = metrics.render()
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
    }


ONE_OF_EACH: list[ModelEvent] = [
    Starting("m", 123),
    Progress("m", 50),
    Ready("m", 1.5),
    Failed("m", "out of memory", True),
    Crashed("m", "exited (code 9)", 9),
    Stopped("m", 0),
    Stats("m", protocol.Stats(busy_slots=1, slots=4, batch_sizes={4: 2}, cached_prompt_tokens=7)),
    Loading("m", "on_demand"),
    Restarting("m", 1),
    Evicted("m", "make_room"),
    LoadWaited("m", 0.5),
    Added("m"),
]


def test_the_list_of_events_is_every_event_type_and_each_is_handled():
    assert {type(e) for e in ONE_OF_EACH} == set(MODEL_EVENTS) == set(ModelEvent.__subclasses__())
    log = EventLog(empty_metrics())
    for event in ONE_OF_EACH:
        log(event)


def test_events_are_frozen_values():
    with pytest.raises(AttributeError):
        Loading("m", "startup").reason = "reload"  # type: ignore[misc]
    assert Restarting("m", 2) == Restarting("m", 2) != Restarting("m", 3)


def test_something_that_is_not_a_model_event_is_refused_not_ignored():
    log = EventLog(empty_metrics())
    with pytest.raises(TypeError, match="no handler"):
        log(("loading", {"model": "m", "reason": "startup"}))  # type: ignore[arg-type]


def test_the_pool_events_move_their_metrics():
    metrics = empty_metrics()
    log = EventLog(metrics)
    log(Added("m"))
    log(Loading("m", "on_demand"))
    log(Loading("m", "on_demand"))
    log(Ready("m", 2.5))
    log(Restarting("m", 1))
    log(Evicted("m", "idle_ttl"))
    log(LoadWaited("m", 0.25))
    log(Stats("m", protocol.Stats(busy_slots=1, slots=4, batch_sizes={4: 2}, cached_prompt_tokens=7)))
    s = scrape(metrics)
    m = {("model", "m")}
    assert s["vram_gateway_model_loads_total", frozenset(m | {("reason", "on_demand")})] == 2
    assert s["vram_gateway_model_load_duration_seconds", frozenset(m)] == 2.5
    assert s["vram_gateway_worker_restarts_total", frozenset(m)] == 1
    assert s["vram_gateway_model_evictions_total", frozenset(m | {("reason", "idle_ttl")})] == 1
    assert s["vram_gateway_load_wait_seconds_count", frozenset(m)] == 1
    assert s["vram_gateway_engine_batch_tokens_count", frozenset(m)] == 2


def test_a_load_shows_on_the_console_in_quarters(caplog):
    log = EventLog(empty_metrics())
    with caplog.at_level(logging.INFO, logger="gateway"):
        log(Starting("m", 7))
        for percent in (1, 10, 26, 30, 51, 99, 100):
            log(Progress("m", percent))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "model m: starting (pid 7)",
        "model m: loading 1%",
        "model m: loading 26%",
        "model m: loading 51%",
        "model m: loading 99%",
        "model m: loading 100%",
    ]
