"""A real Prometheus scrapes the gateway over HTTP and answers the dashboard's queries.

Two targets: the real running gateway (``gateway_server`` in conftest.py, shared with
test_server.py) after real traffic, and GatewayMetrics fed with sample data on a small
http.server, which is the only way to get the GPU series on a machine without GPUs.

Needs the ``prometheus`` and ``promtool`` binaries (Debian: ``apt-get install -y
--no-install-recommends prometheus``); skipped without them. Everything listens on 127.0.0.1
and stops by itself: at most a minute of polling.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.metrics import GatewayMetrics
from tests.dashboard import load_dashboard, metric_names, queries
from tests.metrics_sample import SNAPSHOTS, record_traffic, sample_gpus
from tests.shared_server import API_KEY

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="the prometheus binary is not installed (apt-get install -y --no-install-recommends prometheus)"
)

SCRAPE_INTERVAL_S = 1
WAIT_S = 120.0  # only guards against a hang
# Grafana's variables, as the dashboard would send them with "All" models selected; the
# window spans several 1 s scrapes so rate() has samples to work with.
VARIABLES = {"$model": ".*", "$__rate_interval": "15s", "$__range": "1m"}
# Queries whose answer must hold a real number, not only series: the dashboard's main graphs.
MAIN_PANELS = (
    "Request rate by model and status",
    "Error ratio by model",
    "Request duration p50 / p95 / p99",
    "Time to first token p50 / p95 / p99",
    "Generation speed per request (tokens/s)",
    "Queue depth and requests in flight",
    "Rejected requests by reason",
    "Model states",
    "GPU memory per GPU: used vs planned vs actual",
)
# Series that exist only for models placed on a GPU of the inventory. The real gateway in these
# tests has no declared inventory and runs on the CPU (a declared one would make the planner put
# models on a GPU that is not there and give the workers CUDA_VISIBLE_DEVICES), so it exports
# none of them; the sample-data test below covers the queries that read only these.
GPU_SERIES = frozenset(
    {
        "vram_gateway_gpu_memory_total_bytes",
        "vram_gateway_gpu_memory_used_bytes",
        "vram_gateway_model_planned_bytes",
        "vram_gateway_model_allocated_bytes",
        "vram_gateway_model_process_used_bytes",
        # Measured from llama.cpp's CUDA buffers (gateway.placement.learning): a CPU build has none.
        "vram_gateway_model_measured_bytes",
        "vram_gateway_model_plan_error_bytes",
        "vram_gateway_model_learned_bytes",
    }
)
GPU_PANELS = ("GPU memory per GPU: used vs planned vs actual", "Plan error per model and GPU", "Planned vs actual per model and GPU")
# Series that exist only after an event the session's real gateway never sees: an eviction, a
# request that waits for a load (its models are eager and loaded), a named key's use (it has
# api_keys, not [[keys]]). The sample-data test below covers their panels.
EVENT_SERIES = frozenset(
    {
        "vram_gateway_model_evictions_total",
        "vram_gateway_load_wait_seconds_bucket",
        "vram_gateway_key_requests_total",
        "vram_gateway_key_prompt_tokens_total",
        "vram_gateway_key_completion_tokens_total",
        "vram_gateway_key_requests_rejected_total",
    }
)
EVENT_PANELS = (
    "Model evictions by reason",
    "Load wait p50 / p95",
    "Requests per API key by status",
    "Tokens per API key",
    "Refused requests per API key",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_metrics(metrics: GatewayMetrics) -> Iterator[int]:
    """GatewayMetrics.render() on http://127.0.0.1:PORT/metrics, as the app will serve it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path != "/metrics":
                self.send_error(404)
                return
            body, content_type = metrics.render(self.headers.get("Accept"))
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def wait_for(what: str, check, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@contextlib.contextmanager
def run_prometheus(tmp_path: Path, target_port: int) -> Iterator[str]:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: {SCRAPE_INTERVAL_S}s
  evaluation_interval: {SCRAPE_INTERVAL_S}s
scrape_configs:
  - job_name: vram-gateway
    static_configs:
      - targets: ["127.0.0.1:{target_port}"]
"""
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {proc.returncode}: {(tmp_path / 'prometheus.log').read_text()}")
            with urllib.request.urlopen(base + "/-/ready", timeout=2) as resp:
                return resp.status == 200

        wait_for("prometheus to be ready", ready)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query(base: str, promql: str) -> list[dict[str, Any]]:
    answer = get_json(base + "/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert answer["status"] == "success", answer
    data = answer["data"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def unseen_by_the_real_gateway(expr: str) -> bool:
    """Reads only series the session's real gateway does not export (GPU_SERIES, EVENT_SERIES)."""
    return set(metric_names(expr)) <= GPU_SERIES | EVENT_SERIES


def check_dashboard(base: str, *, skip_unseen: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Run every panel query of the dashboard through Prometheus: each must return series, and
    each of MAIN_PANELS a real number. Returns the answers by "panel N (title) refId"."""
    answers: dict[str, list[dict[str, Any]]] = {}
    skipped: set[str] = set()
    for where, expr in queries(load_dashboard()):
        if where.startswith("variable"):
            continue  # label_values() is Grafana's, not PromQL; checked by the callers
        if skip_unseen and unseen_by_the_real_gateway(expr):
            skipped.add(where[where.index("(") + 1 : where.rindex(")")])
            continue
        result = query(base, substitute(expr))
        assert result, f"{where}: no series for {substitute(expr)!r}"
        answers[where] = result
    if skip_unseen:
        # Only the GPU and event panels may be left out: a new panel on CPU series must not slip by.
        assert skipped == set(GPU_PANELS) | set(EVENT_PANELS), skipped

    for title in MAIN_PANELS:
        if skip_unseen and title in GPU_PANELS:
            continue
        results = [r for where, rs in answers.items() if f"({title})" in where for r in rs]
        assert results, f"no query for panel {title!r}"
        values = [float(r["value"][1]) for r in results]
        assert any(math.isfinite(v) for v in values), f"{title}: only NaN/Inf: {values}"
    return answers


def model_label_values(base: str) -> list[str]:
    """The dashboard's model variable: label_values(vram_gateway_model_state, model)."""
    labels = get_json(base + "/api/v1/label/model/values?" + urllib.parse.urlencode({"match[]": "vram_gateway_model_state"}))
    return sorted(labels["data"])


def sample_sum(gateway: str, name: str) -> float:
    """The sum of the gateway's own samples of ``name``, read from its /metrics."""
    text = httpx.get(gateway + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def requests_total(gateway: str) -> float:
    """The gateway's own count of answered requests."""
    return sample_sum(gateway, "vram_gateway_requests_total")


STEPS = "vram_gateway_engine_batch_tokens_count"


def send_traffic(gateway: str) -> None:
    """Real requests through the gateway: completions and chat, streamed (which time the first
    token) and not, on both chat models; embeddings; and a 404 for an unknown model."""
    with httpx.Client(base_url=gateway + "/v1", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as http:
        # The tiny model's random weights stop at once without the bias towards token 97.
        tiny = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "logit_bias": {"97": 50}}
        gemma = {"model": "gemma", "messages": [{"role": "user", "content": "Count from one to ten."}], "max_tokens": 6, "temperature": 0}
        for path, body in (("/completions", tiny), ("/chat/completions", gemma)):
            r = http.post(path, json=body)
            assert r.status_code == 200, r.text
            with http.stream("POST", path, json={**body, "stream": True}) as r:
                assert r.status_code == 200, r.read()
                assert any(line == "data: [DONE]" for line in r.iter_lines())
        r = http.post("/embeddings", json={"model": "tiny-embed", "input": ["one", "two"]})
        assert r.status_code == 200, r.text
        r = http.post("/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 404, r.text


@needs_prometheus
@pytest.mark.llama
def test_prometheus_scrapes_the_real_gateway_and_answers_the_dashboard(tmp_path, gateway_server):
    gateway, port = gateway_server["base"], gateway_server["port"]
    with run_prometheus(tmp_path, port) as base:
        up = wait_for("the first scrape", lambda: query(base, 'up{job="vram-gateway"} == 1'))
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{port}"
        # Two batches, each waited for until Prometheus has scraped it: the first creates the
        # series, the second moves them, so rate() and histogram_quantile() have a change to see.
        # The workers report their decode steps about once a second ("stats"): wait for those
        # of each batch to reach the gateway too.
        for batch in ("first", "second"):
            steps_before = sample_sum(gateway, STEPS)
            send_traffic(gateway)
            seen = requests_total(gateway)
            wait_for(f"the {batch} batch's engine stats", lambda before=steps_before: sample_sum(gateway, STEPS) > before)
            steps = sample_sum(gateway, STEPS)
            wait_for(
                f"a scrape of the {batch} batch",
                lambda seen=seen, steps=steps: query(base, f"sum(vram_gateway_requests_total) >= {seen}")
                and query(base, f"sum({STEPS}) >= {steps}"),
            )

        check_dashboard(base, skip_unseen=True)

        rate = query(base, substitute('sum by (model, status) (rate(vram_gateway_requests_total{model=~"$model"}[$__rate_interval]))'))
        # Prometheus drops empty labels: the 404 (model="" at the gateway) has no model label.
        moved = {(r["metric"].get("model", ""), r["metric"]["status"]) for r in rate if float(r["value"][1]) > 0}
        assert {("tiny", "200"), ("gemma", "200"), ("tiny-embed", "200"), ("", "404")} <= moved, moved
        for model in ("tiny", "gemma"):
            ttft = query(base, substitute(f'histogram_quantile(0.5, sum by (le) (rate(vram_gateway_time_to_first_token_seconds_bucket{{model="{model}"}}[$__rate_interval])))'))
            assert ttft and float(ttft[0]["value"][1]) > 0, (model, ttft)  # a figure (no NaN); no guessed bound
        loaded = query(base, "vram_gateway_model_load_duration_seconds")
        assert sorted(r["metric"]["model"] for r in loaded) == ["gemma", "tiny", "tiny-embed"]
        assert model_label_values(base) == ["gemma", "tiny", "tiny-embed"]


@needs_prometheus
def test_prometheus_answers_the_dashboard_from_sample_data_with_gpus(tmp_path):
    """Sample data on a declared two-GPU inventory: the GPU panels, which the CPU-only real
    gateway above cannot fill, get series too."""
    metrics = GatewayMetrics(lambda: SNAPSHOTS, sample_gpus)
    record_traffic(metrics)
    with serve_metrics(metrics) as port, run_prometheus(tmp_path, port) as base:
        up = wait_for("the first scrape", lambda: query(base, 'up{job="vram-gateway"} == 1'))
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{port}"
        # More traffic after the first scrape, so rate() and increase() see a change.
        record_traffic(metrics)
        wait_for(
            "a scrape of the second batch",
            lambda: query(base, 'vram_gateway_requests_total{model="chat", endpoint="/v1/completions", status="200"} == 2'),
        )

        check_dashboard(base)

        # The request rate moved by the second batch.
        rate = query(base, substitute('sum by (model) (rate(vram_gateway_requests_total{model=~"$model"}[$__rate_interval]))'))
        assert any(float(r["value"][1]) > 0 for r in rate if r["metric"].get("model") == "chat")
        gpus = query(base, "sum by (gpu) (vram_gateway_model_planned_bytes)")
        assert sorted(r["metric"]["gpu"] for r in gpus) == ["0", "1"]
        assert model_label_values(base) == ["chat", "embed"]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install -y --no-install-recommends prometheus)")
def test_promtool_accepts_the_shipped_prometheus_config():
    result = subprocess.run([str(PROMTOOL), "check", "config", str(ROOT / "deploy/prometheus.yml")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
