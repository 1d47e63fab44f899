"""deploy/grafana/scanqueue.json: every query names metrics (and labels) the farm exports.

A dashboard built on a renamed or never-exported metric shows "No data"
silently; this test makes that a failure. Metric names are taken from each
PromQL expression after removing strings, label matchers, groupings, ranges,
numbers, keywords and function names: whatever identifier remains is a metric.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from scanqueue import metrics, vulnmetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "scanqueue.json"
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "and", "or", "unless", "inf", "nan"}  # fmt: skip


def exported() -> dict[str, set[str]]:
    """Every sample name the farm exports -> its label names."""
    out = {name: set(labels) for name, (_k, _h, labels) in vulnmetrics.METRICS.items()}
    for family in metrics.REGISTRY.collect():
        labels = set(getattr(_collector(family.name), "_labelnames", ()))
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                    "gauge": ("",)}[family.type]  # fmt: skip
        for suffix in suffixes:
            out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    out[metrics.QUEUE_DEPTH] = {"cluster", "queue"}
    return out


def _collector(name: str) -> Any:
    for value in vars(metrics).values():
        if getattr(value, "_name", None) == name:
            return value
    return None


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, and the template queries."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append((f"${variable['name']}", query["query"]))
    return found


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names in its matcher) for each metric an expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    out: list[tuple[str, set[str]]] = []
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", text):
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", match.group(2)))
        out.append((match.group(1), labels))
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,[^)]*\)", r"\1", text)
    for match in re.finditer(r"(?<![0-9.])\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        out.append((name, set()))
    return out


def test_selector_parser_finds_metrics_and_labels_and_skips_functions() -> None:
    expr = (
        'topk(5, sum by (cluster, le) (rate(a_total{cluster=~"x|y", s!="by"}[5m]))) '
        "* on (cluster) group_left b_gauge > 0.5 or c"
    )
    assert selectors(expr) == [("a_total", {"cluster", "s"}), ("a_total", set()),
                               ("b_gauge", set()), ("c", set())]  # fmt: skip
    assert selectors("label_values(scanqueue_images, cluster)") == [("scanqueue_images", set())]


def test_dashboard_is_a_grafana_dashboard_with_the_panels_the_issue_asks_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for wanted in ("severity, per cluster", "top 15 workloads", "fixable critical", "scan state"):
        assert wanted in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36


@pytest.mark.parametrize(
    "panel,expr",
    expressions(json.loads(DASHBOARD.read_text(encoding="utf-8"))),
    ids=lambda v: str(v)[:50],
)
def test_every_query_names_only_exported_metrics_and_their_labels(panel: str, expr: str) -> None:
    known = exported()
    found = selectors(expr)
    assert found, f"{panel}: no metric found in {expr!r}"
    for name, labels in found:
        assert name in known, f"{panel}: {name} is not exported by the farm ({expr})"
        assert labels <= known[name], f"{panel}: {name} has no label {labels - known[name]}"
    grouped = re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
    every_label = set().union(*(known[n] for n, _ in found))
    for group in grouped:
        for label in (g.strip() for g in group.split(",")):
            assert label in every_label, f"{panel}: groups by unknown label {label!r}"
