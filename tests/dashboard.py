"""The Grafana dashboard (deploy/grafana/vram-gateway.json) and the series its queries name, read
for tests/unit/observability/test_dashboard.py and tests/system/test_prometheus.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "vram-gateway.json"

PROMQL_FUNCTIONS = frozenset(
    """abs absent absent_over_time avg avg_over_time bottomk ceil changes clamp clamp_max clamp_min
    count count_over_time count_values day_of_month day_of_week day_of_year days_in_month delta deriv
    exp floor group histogram_count histogram_fraction histogram_quantile histogram_sum holt_winters
    hour idelta increase irate label_join label_replace last_over_time ln log10 log2 max max_over_time
    min min_over_time minute month predict_linear present_over_time quantile quantile_over_time rate
    resets round scalar sgn sort sort_desc sqrt stddev stddev_over_time stdvar stdvar_over_time sum
    sum_over_time time timestamp topk vector year""".split()
)
PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset"})
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} ({panel['title']}) {target['refId']}", target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            yield f"variable {var['name']}", query


def metric_names(expr: str) -> list[str]:
    """The series names an expression selects (everything that is not a function, keyword,
    label, string, duration or Grafana variable)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: regexes, label values
    text = re.sub(r"label_values\(\s*([^,()]*?)\s*,\s*\w+\s*\)", r"\1", text)  # a variable's query
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = GROUPING.sub("", text)  # by (...), on (...): label names
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", "", text)  # numbers
    names = []
    for m in IDENTIFIER.finditer(text):
        word = m.group()
        is_call = text[m.end() :].lstrip().startswith("(")
        if word in PROMQL_KEYWORDS or (is_call and word in PROMQL_FUNCTIONS):
            continue
        names.append(word)
    return names
