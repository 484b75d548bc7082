"""The last minute per model: requests and tokens/s for the web page's models table."""

from __future__ import annotations

from gateway.observability.activity import RecentActivity
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.telemetry import RequestRecord


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_requests_and_tokens_count_over_the_last_minute_only():
    clock = Clock()
    recent = RecentActivity(clock)
    recent.record("a", 30)
    clock.now += 30
    recent.record("a", 90)
    recent.record("b")
    assert (recent.of("a").requests, recent.of("a").completion_tokens) == (2, 120)
    assert recent.of("a").tokens_per_s == 2.0
    assert recent.of("b").requests == 1 and recent.of("b").tokens_per_s == 0.0
    clock.now += 31  # the first request is now 61 s old
    assert (recent.of("a").requests, recent.of("a").completion_tokens) == (1, 90)
    clock.now += 60
    assert recent.of("a").requests == 0 and recent.of("unknown").requests == 0


def test_memory_stays_bounded_whatever_the_request_rate():
    clock = Clock()
    recent = RecentActivity(clock)
    for _ in range(600):
        for _ in range(50):
            recent.record("a", 1)
        clock.now += 0.5
    # Whole seconds: the window is the last minute to within a second.
    assert 59 * 100 <= recent.of("a").requests <= 60 * 100
    windows = recent._models["a"]
    assert all(len(w._steps) <= recent.window_s for w in (windows.requests, windows.errors, windows.tokens))


def test_a_finished_request_feeds_the_window_of_its_model_only():
    clock = Clock()
    metrics = GatewayMetrics(lambda: [], lambda: [], recent=RecentActivity(clock))
    record = RequestRecord(endpoint="/v1/completions", request_id="r1", model="m")
    record.finish(metrics, 200, usage={"prompt_tokens": 3, "completion_tokens": 12})
    record.finish(metrics, 200, usage={"completion_tokens": 12})  # recorded once only
    RequestRecord(endpoint="/v1/completions", request_id="r2").finish(metrics, 404)  # no model
    RequestRecord(endpoint="/v1/completions", request_id="r3", model="m").finish(metrics, 429)
    assert (metrics.recent.of("m").requests, metrics.recent.of("m").completion_tokens) == (2, 12)
    assert metrics.recent.of("").requests == 0


def test_failed_requests_count_as_errors_and_the_last_one_is_kept_with_its_age():
    clock = Clock()
    recent = RecentActivity(clock)
    recent.record("m", 5)
    recent.record("m", status=500, error="model 'm': unknown chat format")
    recent.record("m", status=400, error="bad request")  # the client's fault: not the model's error
    clock.now += 10
    recent.record("m", status=503)
    activity = recent.of("m")
    assert (activity.requests, activity.errors) == (4, 2) and activity.error_rate == 0.5
    assert (activity.last_error.status, activity.last_error.message) == (503, "HTTP 503")
    clock.now += 61  # out of the window: no error rate, but the last error stays, with its age
    activity = recent.of("m")
    assert (activity.requests, activity.errors, activity.error_rate) == (0, 0, 0.0)
    assert activity.last_error.status == 503 and activity.last_error_age_s == 61
    assert recent.of("other").last_error is None and recent.of("other").error_rate == 0.0


def test_a_finished_request_answered_5xx_records_the_text_its_client_got():
    metrics = GatewayMetrics(lambda: [], lambda: [], recent=RecentActivity(Clock()))
    RequestRecord(endpoint="/v1/completions", request_id="r1", model="m").finish(metrics, 500, error="boom")
    RequestRecord(endpoint="/v1/completions", request_id="r2", model="m").finish(metrics, 499)  # client left
    activity = metrics.recent.of("m")
    assert (activity.requests, activity.errors, activity.last_error.message) == (2, 1, "boom")
