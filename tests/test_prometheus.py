"""A real Prometheus scrapes GatewayMetrics over HTTP and answers the dashboard's queries.

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

import pytest

from gateway.metrics import GatewayMetrics
from tests.metrics_sample import SNAPSHOTS, record_traffic, sample_gpus
from tests.test_dashboard import load_dashboard, queries

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="the prometheus binary is not installed (apt-get install -y --no-install-recommends prometheus)"
)

SCRAPE_INTERVAL_S = 1
WAIT_S = 30.0
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


@needs_prometheus
def test_prometheus_scrapes_the_gateway_and_answers_the_dashboard(tmp_path):
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

        answers: dict[str, list[dict[str, Any]]] = {}
        for where, expr in queries(load_dashboard()):
            if where.startswith("variable"):
                continue  # label_values() is Grafana's, not PromQL; checked below
            result = query(base, substitute(expr))
            assert result, f"{where}: no series for {substitute(expr)!r}"
            answers[where] = result

        for title in MAIN_PANELS:
            results = [r for where, rs in answers.items() if f"({title})" in where for r in rs]
            assert results, f"no query for panel {title!r}"
            values = [float(r["value"][1]) for r in results]
            assert any(math.isfinite(v) for v in values), f"{title}: only NaN/Inf: {values}"

        # The request rate moved by the second batch.
        rate = query(base, substitute('sum by (model) (rate(vram_gateway_requests_total{model=~"$model"}[$__rate_interval]))'))
        assert any(float(r["value"][1]) > 0 for r in rate if r["metric"].get("model") == "chat")

        # The model variable's options: label_values(vram_gateway_model_state, model).
        labels = get_json(base + "/api/v1/label/model/values?" + urllib.parse.urlencode({"match[]": "vram_gateway_model_state"}))
        assert sorted(labels["data"]) == ["chat", "embed"]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install -y --no-install-recommends prometheus)")
def test_promtool_accepts_the_shipped_prometheus_config():
    result = subprocess.run([str(PROMTOOL), "check", "config", str(ROOT / "deploy/prometheus.yml")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
