"""GatewayMetrics: names, labels and values as a scraper parses them; the JSON log formatter."""

from __future__ import annotations

import io
import json
import logging

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from gateway.engine.protocol import Stats
from gateway.observability.logs import JsonFormatter, configure_logging, log_request, request_log_fields
from gateway.observability.metrics import (
    MODEL_STATES,
    REJECT_REASONS,
    GatewayMetrics,
    ModelSnapshot,
    generation_speed,
)
from planner.devices import Device
from planner.llama_log import llama_buffers_per_gpu
from tests.metrics_sample import GIB, MIB, SNAPSHOTS, sample_gpus, sample_metrics


class Scrape:
    """One parsed exposition: look a sample up by name and labels."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        body, self.content_type = metrics.render()
        self.families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def get(self, metric: str, /, **labels: str) -> float | None:
        found = [s.value for s in self.samples if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) <= 1, f"{metric}{labels} matches {len(found)} samples"
        return found[0] if found else None

    def series(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name]


def empty_metrics(snapshots=(), gpus=()) -> GatewayMetrics:
    return GatewayMetrics(lambda: list(snapshots), lambda: list(gpus))


# ---------------------------------------------------------------- exposition


def test_every_family_is_prefixed_and_the_body_is_the_text_format():
    scrape = Scrape(sample_metrics())
    assert scrape.content_type.startswith("text/plain")
    assert scrape.families
    assert all(name.startswith("vram_gateway_") for name in scrape.families)


def test_openmetrics_when_the_scraper_asks_for_it():
    body, content_type = sample_metrics().render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    names = {f.name for f in parse_openmetrics(body.decode())}
    assert "vram_gateway_requests" in names and "vram_gateway_model_state" in names


def test_counter_and_histogram_types_follow_the_naming_rules():
    scrape = Scrape(sample_metrics())
    types = {name: f.type for name, f in scrape.families.items()}
    # The parser strips "_total" from a counter family's name; its samples keep it.
    assert types["vram_gateway_requests"] == "counter"
    assert scrape.get("vram_gateway_requests_total", model="chat", endpoint="/v1/completions", status="200") == 1
    for hist in ("vram_gateway_request_duration_seconds", "vram_gateway_time_to_first_token_seconds", "vram_gateway_generation_tokens_per_second"):
        assert types[hist] == "histogram"
    for gauge in ("vram_gateway_queue_depth", "vram_gateway_model_state", "vram_gateway_gpu_memory_used_bytes", "vram_gateway_model_planned_bytes"):
        assert types[gauge] == "gauge"


def test_two_instances_keep_separate_registries():
    a, b = empty_metrics(), empty_metrics()
    a.request_finished("m", "/v1/completions", 200, 1.0)
    assert Scrape(a).get("vram_gateway_requests_total", model="m") == 1
    assert Scrape(b).get("vram_gateway_requests_total", model="m") is None


# ---------------------------------------------------------------- events


def test_request_finished_moves_counters_and_histograms_by_the_right_amounts():
    m = empty_metrics()
    m.request_finished("chat", "/v1/chat/completions", 200, 2.5, ttft_s=0.5, prompt_tokens=40, completion_tokens=101)
    m.request_finished("chat", "/v1/chat/completions", 200, 0.2, ttft_s=0.02, prompt_tokens=5, completion_tokens=1)
    s = Scrape(m)
    labels = {"model": "chat", "endpoint": "/v1/chat/completions"}
    assert s.get("vram_gateway_requests_total", status="200", **labels) == 2
    assert s.get("vram_gateway_request_duration_seconds_count", **labels) == 2
    assert s.get("vram_gateway_request_duration_seconds_sum", **labels) == pytest.approx(2.7)
    assert s.get("vram_gateway_request_duration_seconds_bucket", le="0.25", **labels) == 1
    assert s.get("vram_gateway_request_duration_seconds_bucket", le="5.0", **labels) == 2
    assert s.get("vram_gateway_time_to_first_token_seconds_sum", **labels) == pytest.approx(0.52)
    assert s.get("vram_gateway_time_to_first_token_seconds_bucket", le="0.025", **labels) == 1
    assert s.get("vram_gateway_prompt_tokens_total", model="chat") == 45
    assert s.get("vram_gateway_completion_tokens_total", model="chat") == 102
    # 100 tokens after the first in 2.0 s = 50 tokens/s; the one-token answer has no speed.
    assert s.get("vram_gateway_generation_tokens_per_second_count", model="chat") == 1
    assert s.get("vram_gateway_generation_tokens_per_second_sum", model="chat") == pytest.approx(50.0)
    assert s.get("vram_gateway_generation_tokens_per_second_bucket", model="chat", le="40.0") == 0
    assert s.get("vram_gateway_generation_tokens_per_second_bucket", model="chat", le="50.0") == 1


def test_errors_are_counted_but_stay_out_of_the_latency_histograms():
    m = empty_metrics()
    m.request_finished("chat", "/v1/chat/completions", 429, 0.001)
    m.request_finished("chat", "/v1/chat/completions", 500, 3.0, ttft_s=0.5, prompt_tokens=7, completion_tokens=3)
    s = Scrape(m)
    assert s.get("vram_gateway_requests_total", model="chat", status="429") == 1
    assert s.get("vram_gateway_requests_total", model="chat", status="500") == 1
    assert s.series("vram_gateway_request_duration_seconds_count") == []
    assert s.series("vram_gateway_time_to_first_token_seconds_count") == []
    assert s.series("vram_gateway_generation_tokens_per_second_count") == []
    # Tokens the worker did process still count.
    assert s.get("vram_gateway_prompt_tokens_total", model="chat") == 7


def test_a_request_that_reached_no_model_gets_an_empty_model_label():
    m = empty_metrics()
    m.request_finished(None, "/v1/chat/completions", 404, 0.001)
    m.rejected(None, "model_unavailable")
    s = Scrape(m)
    # Prometheus treats an empty label as absent; the parser reports it as "".
    assert s.get("vram_gateway_requests_total", status="404") == 1
    assert s.series("vram_gateway_requests_total")[0].get("model", "") == ""


def test_rejections_by_reason_and_unknown_reasons_refused():
    m = empty_metrics()
    m.add_model("chat")
    m.rejected("chat", "queue_full")
    m.rejected("chat", "queue_full")
    m.rejected("chat", "queue_timeout")
    s = Scrape(m)
    assert s.get("vram_gateway_requests_rejected_total", model="chat", reason="queue_full") == 2
    assert s.get("vram_gateway_requests_rejected_total", model="chat", reason="queue_timeout") == 1
    # add_model created the series at zero, so rate() sees the first one.
    assert s.get("vram_gateway_requests_rejected_total", model="chat", reason="model_unavailable") == 0
    with pytest.raises(ValueError):
        m.rejected("chat", "too_many")


def test_add_model_creates_every_per_model_counter_at_zero():
    m = empty_metrics()
    m.add_model("chat")
    s = Scrape(m)
    assert {l["reason"] for l in s.series("vram_gateway_requests_rejected_total")} == set(REJECT_REASONS)
    assert s.get("vram_gateway_worker_restarts_total", model="chat") == 0
    assert s.get("vram_gateway_prompt_tokens_total", model="chat") == 0
    assert s.get("vram_gateway_completion_tokens_total", model="chat") == 0


def test_restarts_and_load_duration():
    m = empty_metrics()
    m.worker_restarted("chat")
    m.worker_restarted("chat")
    m.model_loaded("chat", 40.0)
    m.model_loaded("chat", 12.5)  # the latest load is what the gauge shows
    s = Scrape(m)
    assert s.get("vram_gateway_worker_restarts_total", model="chat") == 2
    assert s.get("vram_gateway_model_load_duration_seconds", model="chat") == 12.5


# ---------------------------------------------------------------- state at scrape time


def test_model_state_is_one_gauge_per_state_from_the_snapshot():
    s = Scrape(empty_metrics(SNAPSHOTS))
    assert {l["state"] for l in s.series("vram_gateway_model_state") if l["model"] == "chat"} == set(MODEL_STATES)
    assert s.get("vram_gateway_model_state", model="chat", state="ready") == 1
    assert s.get("vram_gateway_model_state", model="chat", state="loading") == 0
    # The supervisor's "starting" is exported as "loading".
    assert s.get("vram_gateway_model_state", model="embed", state="loading") == 1
    assert s.get("vram_gateway_model_state", model="embed", state="ready") == 0
    assert sum(v.value for v in s.samples if v.name == "vram_gateway_model_state") == 2


def test_an_unknown_state_is_exported_as_itself():
    s = Scrape(empty_metrics([ModelSnapshot(name="m", state="unloaded")]))
    assert s.get("vram_gateway_model_state", model="m", state="unloaded") == 1
    assert s.get("vram_gateway_model_state", model="m", state="ready") == 0


def test_queue_gauges_come_from_the_snapshot():
    s = Scrape(empty_metrics(SNAPSHOTS))
    assert s.get("vram_gateway_queue_depth", model="chat") == 3
    assert s.get("vram_gateway_requests_in_flight", model="chat") == 2
    assert s.get("vram_gateway_max_concurrency", model="chat") == 2
    assert s.get("vram_gateway_queue_capacity", model="embed") == 4
    assert s.get("vram_gateway_queue_depth", model="embed") == 0


def test_state_is_read_at_every_scrape():
    current = {"state": "starting", "waiting": 0}
    m = GatewayMetrics(lambda: [ModelSnapshot(name="m", state=current["state"], waiting=current["waiting"])], lambda: [])
    assert Scrape(m).get("vram_gateway_model_state", model="m", state="loading") == 1
    current.update(state="ready", waiting=5)
    s = Scrape(m)
    assert s.get("vram_gateway_model_state", model="m", state="ready") == 1
    assert s.get("vram_gateway_queue_depth", model="m") == 5


def test_gpu_series_from_a_declared_inventory():
    s = Scrape(empty_metrics(gpus=sample_gpus()))
    g0 = {"gpu": "0", "gpu_uuid": "declared-0"}
    assert s.get("vram_gateway_gpu_memory_total_bytes", **g0) == 24 * GIB
    assert s.get("vram_gateway_gpu_memory_free_bytes", **g0) == 20 * GIB
    assert s.get("vram_gateway_gpu_memory_used_bytes", **g0) == 4 * GIB
    assert s.get("vram_gateway_gpu_memory_used_bytes", gpu="1", gpu_uuid="declared-1") == 2 * GIB
    assert s.get("vram_gateway_gpu_info", gpu="1", gpu_uuid="declared-1", name="declared GPU 1") == 1


def test_planned_allocated_and_process_bytes_per_model_and_gpu():
    s = Scrape(empty_metrics(SNAPSHOTS, sample_gpus()))
    chat0 = {"model": "chat", "gpu": "0", "gpu_uuid": "declared-0"}
    assert s.get("vram_gateway_model_planned_bytes", **chat0) == 6 * GIB
    assert s.get("vram_gateway_model_allocated_bytes", **chat0) == 5 * GIB
    assert s.get("vram_gateway_model_process_used_bytes", **chat0) == 6 * GIB + 100 * MIB
    assert s.get("vram_gateway_model_planned_bytes", model="embed", gpu="1") == 1 * GIB
    # A model that has not loaded yet has a plan but nothing allocated.
    assert s.get("vram_gateway_model_allocated_bytes", model="embed") is None


def test_a_gpu_missing_from_the_inventory_keeps_its_series_with_an_empty_uuid():
    s = Scrape(empty_metrics([ModelSnapshot(name="m", state="ready", planned_bytes={3: GIB})], sample_gpus()))
    (labels,) = s.series("vram_gateway_model_planned_bytes")
    assert labels["gpu"] == "3" and labels.get("gpu_uuid", "") == ""


def test_a_failing_source_leaves_the_other_series_and_is_counted(caplog):
    def broken_gpus() -> list[Device]:
        raise RuntimeError("NVML went away")

    m = GatewayMetrics(lambda: SNAPSHOTS, broken_gpus)
    m.request_finished("chat", "/v1/completions", 200, 1.0)
    with caplog.at_level(logging.ERROR, logger="gateway.observability.metrics"):
        s = Scrape(m)
    assert s.series("vram_gateway_gpu_memory_total_bytes") == []
    assert s.get("vram_gateway_model_state", model="chat", state="ready") == 1
    assert s.get("vram_gateway_requests_total", model="chat") == 1
    assert s.get("vram_gateway_metrics_collect_errors_total", source="gpus") == 1
    assert "reading gpus failed" in caplog.text


# ---------------------------------------------------------------- helpers


def test_llama_buffers_map_cuda_slots_to_nvml_indices():
    allocated = {
        "model_mib": {"CUDA0": 1000.0, "CUDA1": 500.0, "CPU_Mapped": 300.0},
        "kv_mib": {"CUDA0": 256.0, "CUDA1": 256.0},
        "output_mib": {"CUDA_Host": 1.0},
        "compute_mib": {"CUDA0": 100.5, "CUDA_Host": 12.0, "CUDA7": 5.0},
        "offloaded_layers": 33,
        "total_layers": 33,
    }
    # CUDA_VISIBLE_DEVICES=2,0: llama.cpp's CUDA0 is NVML GPU 2. CUDA7 is out of range.
    assert llama_buffers_per_gpu(allocated, [2, 0]) == {2: round(1356.5 * MIB), 0: 756 * MIB}
    assert llama_buffers_per_gpu({}, [0]) == {}


@pytest.mark.parametrize(
    ("duration", "ttft", "tokens", "expected"),
    [
        (2.5, 0.5, 101, 50.0),
        (1.0, None, 50, None),  # no first-token time: prefill cannot be separated
        (1.0, 0.5, 1, None),  # one token: no decode phase
        (1.0, 0.5, None, None),
        (0.5, 0.5, 10, None),  # no time after the first token
        (float("nan"), 0.1, 10, None),
        (1.0, -0.1, 10, None),
    ],
)
def test_generation_speed(duration, ttft, tokens, expected):
    assert generation_speed(duration, ttft, tokens) == expected


# ---------------------------------------------------------------- logs


def _record(logger: str = "gateway", msg: str = "hello %s", args=("world",), **extra) -> logging.LogRecord:
    record = logging.getLogger(logger).makeRecord(logger, logging.WARNING, __file__, 1, msg, args, None, extra=extra or None)
    return record


def test_json_formatter_writes_one_object_per_line_with_the_extra_fields():
    line = JsonFormatter().format(_record(request_id="abc", model="chat", status=200))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "warning" and doc["logger"] == "gateway" and doc["message"] == "hello world"
    assert doc["time"].endswith("Z") and "T" in doc["time"]
    assert doc["request_id"] == "abc" and doc["model"] == "chat" and doc["status"] == 200
    assert list(doc)[:4] == ["time", "level", "logger", "message"]
    assert "args" not in doc and "msg" not in doc and "levelno" not in doc


def test_json_formatter_keeps_exceptions_and_unserialisable_extras_on_one_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info(), extra={"path": object()})
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert "ValueError: boom" in doc["exc_info"]
    assert doc["path"].startswith("<object object")


def test_request_log_fields():
    fields = request_log_fields(
        request_id="r1", model="chat", endpoint="/v1/chat/completions", status=200, duration_s=1.23456, ttft_s=0.1, prompt_tokens=3, completion_tokens=5
    )
    assert fields == {
        "event": "request",
        "request_id": "r1",
        "model": "chat",
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "duration_ms": 1234.6,
        "ttft_ms": 100.0,
    }


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_logging_json_and_log_request(restore_root_logging, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("info", json_format=True)
    configure_logging("INFO", json_format=True)  # again: still one handler, not two lines
    log_request(request_id="r1", model="chat", endpoint="/v1/completions", status=503, duration_s=0.5)
    logging.getLogger("gateway").debug("below the level")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["logger"] == "gateway.request" and doc["request_id"] == "r1" and doc["status"] == 503
    assert doc["duration_ms"] == 500.0 and doc["ttft_ms"] is None and doc["completion_tokens"] is None
    assert "r1 /v1/completions chat 503" in doc["message"]


def test_configure_logging_text(restore_root_logging, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("warning", json_format=False)
    logging.getLogger("gateway").info("hidden")
    logging.getLogger("gateway").warning("shown")
    out = stream.getvalue()
    assert "hidden" not in out and "WARNING gateway: shown" in out


def test_engine_stats_feed_the_batch_size_histogram_the_prompt_cache_counter_and_the_slot_gauges():
    from tests.metrics_sample import SNAPSHOTS, sample_gpus

    metrics = GatewayMetrics(lambda: SNAPSHOTS, sample_gpus)
    metrics.add_model("chat")
    metrics.engine_stats("chat", Stats(busy_slots=2, slots=4, batch_sizes={4: 3, 68: 1}, cached_prompt_tokens=50))
    metrics.engine_stats("chat", Stats(busy_slots=0, slots=4, batch_sizes={}, cached_prompt_tokens=0))
    body = metrics.render()[0].decode()
    assert 'vram_gateway_engine_batch_tokens_count{model="chat"} 4.0' in body
    assert 'vram_gateway_engine_batch_tokens_sum{model="chat"} 80.0' in body
    assert 'vram_gateway_prompt_cache_tokens_total{model="chat"} 50.0' in body
    assert 'vram_gateway_engine_slots{model="chat"} 2.0' in body  # from the snapshot
    assert 'vram_gateway_engine_slots_busy{model="chat"} 2.0' in body
