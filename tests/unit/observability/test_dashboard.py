"""The Grafana dashboard imports, and every series its queries name is one the gateway exports."""

from __future__ import annotations

import re

import pytest

from tests.dashboard import HISTOGRAM_SUFFIXES, all_panels, load_dashboard, metric_names, queries
from tests.metrics_sample import exported_sample_names, sample_metrics

# Grafana 10.0 wrote schemaVersion 38; an older Grafana would have to migrate the panels.
MIN_SCHEMA_VERSION = 36


def family_of(name: str, histograms: set[str]) -> str:
    """The metric family a series belongs to: a histogram's _bucket/_sum/_count, a counter's _total."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name.removesuffix("_total")


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_sample_names(sample_metrics())


# ---------------------------------------------------------------- the dashboard imports


def test_dashboard_is_importable_json():
    dash = load_dashboard()
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= MIN_SCHEMA_VERSION
    assert dash["uid"] and dash["title"]
    # An exported dashboard must not carry the numeric id of the Grafana it came from.
    assert dash.get("id") is None


def test_panel_ids_are_unique_and_panels_fit_the_grid():
    panels = list(all_panels(load_dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, p["title"]


def test_template_variables():
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query" and model["multi"] and model["includeAll"]
    assert model["allValue"] == ".*"  # "All" must also match the empty model label
    assert model["datasource"]["uid"] == "${datasource}"


def test_every_query_uses_the_datasource_variable():
    for panel in all_panels(load_dashboard()["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_panels_the_issue_asks_for_are_there():
    exprs = " ".join(expr for _, expr in queries(load_dashboard()))
    for needed in (
        "vram_gateway_requests_total",
        "histogram_quantile(0.5, sum by (model, le) (rate(vram_gateway_request_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (model, le) (rate(vram_gateway_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (model, le) (rate(vram_gateway_request_duration_seconds_bucket",
        "vram_gateway_time_to_first_token_seconds_bucket",
        "vram_gateway_generation_tokens_per_second_bucket",
        "vram_gateway_queue_depth",
        "vram_gateway_requests_rejected_total",
        "vram_gateway_model_state",
        "vram_gateway_gpu_memory_used_bytes",
        "vram_gateway_model_planned_bytes",
        "vram_gateway_model_process_used_bytes",
        # issue 22, item 11: loads, evictions, load wait and per-key usage
        "sum by (model, reason) (increase(vram_gateway_model_loads_total",
        "sum by (model, reason) (increase(vram_gateway_model_evictions_total",
        "histogram_quantile(0.95, sum by (model, le) (rate(vram_gateway_load_wait_seconds_bucket",
        "sum by (key, status) (rate(vram_gateway_key_requests_total",
        "vram_gateway_key_prompt_tokens_total",
        "vram_gateway_key_completion_tokens_total",
        "sum by (key, reason) (rate(vram_gateway_key_requests_rejected_total",
    ):
        assert needed in exprs, needed


def gpu_series() -> set[str]:
    """The series that carry a ``gpu`` label (one per GPU of one gateway)."""
    body, _ = sample_metrics().render()
    return {line.split("{")[0] for line in body.decode().splitlines() if 'gpu="' in line}


def test_gpu_panels_keep_each_node_apart():
    """In cluster mode Prometheus scrapes every node: GPU 0 of each node is a series of its own
    (its ``instance``), so a sum over a GPU-labelled series keeps instance and gpu, and a legend
    that names the GPU names the instance too (issue 22, item 11: ``sum by (gpu)`` added up GPU 0
    of every node)."""
    per_gpu = gpu_series()
    assert {"vram_gateway_gpu_memory_used_bytes", "vram_gateway_model_planned_bytes"} <= per_gpu
    checked = 0
    for panel in all_panels(load_dashboard()["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            if not set(metric_names(expr)) & per_gpu:
                continue
            checked += 1
            for grouping in re.findall(r"(?:by|on)\s*\(([^)]*)\)", expr):
                labels = {label.strip() for label in grouping.split(",")}
                assert {"instance", "gpu"} <= labels, f"panel {panel['title']!r}: {expr}"
            assert not re.search(r"without\s*\(", expr), f"panel {panel['title']!r}: {expr}"
            legend = target.get("legendFormat", "")
            if "{{gpu}}" in legend:
                assert "{{instance}}" in legend, f"panel {panel['title']!r}: legend {legend!r}"
    assert checked >= 8


# ---------------------------------------------------------------- every metric name is exported


def test_every_metric_name_in_every_query_is_exported(exported):
    histograms = {n.removesuffix("_bucket") for n in exported if n.endswith("_bucket")}
    families = {family_of(n, histograms) for n in exported}
    for where, expr in queries(load_dashboard()):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            # Exact series names: a bare histogram name or a counter without _total selects
            # nothing in Prometheus even though its family exists.
            assert name in exported, f"{where}: {name!r} is not exported (family {family_of(name, histograms)!r} " + (
                "exists: wrong suffix)" if family_of(name, histograms) in families else "unknown)"
            )


def test_per_model_queries_are_filtered_by_the_model_variable(exported):
    body, _ = sample_metrics().render()
    with_model = {line.split("{")[0] for line in body.decode().splitlines() if 'model="' in line}
    for where, expr in queries(load_dashboard()):
        if where.startswith("variable") or re.search(r"by \(instance, gpu\)", expr):
            continue  # per-GPU totals add up every model on purpose
        for name in metric_names(expr):
            if name in with_model:
                selectors = re.findall(r"(?<![\w:])" + re.escape(name) + r"(?![\w:])(\{[^}]*\})?", expr)
                assert selectors and all('model=~"$model"' in s for s in selectors), f"{where}: {name} not filtered by $model"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (model, le) (rate(vram_gateway_x_bucket{model=~"$model", le!="1"}[$__rate_interval]))', ["vram_gateway_x_bucket"]),
        ("histogram_quantile(0.95, sum by (le) (rate(a_bucket[5m])))", ["a_bucket"]),
        ("a - on(gpu) group_left(name) b or c * 0", ["a", "b", "c"]),
        ("label_values(vram_gateway_model_state, model)", ["vram_gateway_model_state"]),
        ('up{job="x"} == 1', ["up"]),
    ],
)
def test_metric_names_parser(expr, expected):
    assert metric_names(expr) == expected


def test_the_check_catches_wrong_suffixes(exported):
    assert "vram_gateway_request_duration_seconds" not in exported  # a histogram's bare name
    assert "vram_gateway_requests" not in exported  # a counter without _total
    assert "vram_gateway_request_duration_seconds_bucket" in exported


def test_a_plan_error_panel_shows_measured_less_planned_and_the_learned_figure():
    (panel,) = [p for p in all_panels(load_dashboard()["panels"]) if p.get("title", "").startswith("Plan error")]
    exprs = " ".join(t["expr"] for t in panel["targets"])
    assert "vram_gateway_model_plan_error_bytes" in exprs and "vram_gateway_model_learned_bytes" in exprs
