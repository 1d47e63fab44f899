"""cli/html.render: escaping, totals per cluster, nothing that could fetch (pure; no browser)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from scanqueue import store
from scanqueue.cli import html
from scanqueue.store import overview

COLUMNS = ("cluster", "namespace", "workload", "critical", "high", "medium", "low", "unknown",
           "fixable", "total")  # fmt: skip


def page(
    rows: tuple[tuple[object, ...], ...], unscanned: tuple[tuple[object, ...], ...] = ()
) -> str:
    return html.render(
        overview.Overview(
            generated_at=datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
            workloads=store.ReportTable(COLUMNS, rows),
            fixable=overview.Section(("a",), (), 0),
            changes=overview.Section(("a",), (), 0),
            unscanned=overview.Section(("cluster", "reason"), unscanned, len(unscanned) + 3),
        )
    )


def test_names_and_reasons_are_escaped() -> None:
    text = page(
        (("c<1>", "ns", "Deployment/<script>alert(1)</script>", 1, 0, 0, 0, 0, 1, 1),),
        unscanned=(("c<1>", 'failed: "<img src=x>"'),),
    )
    assert "<script>alert" not in text and "&lt;script&gt;" in text
    assert "<img" not in text and "&lt;img src=x&gt;" in text
    assert "3 more rows not shown" in text


def test_cluster_totals_add_up_workloads_and_the_chart_has_one_bar_segment_per_severity() -> None:
    rows = (
        ("a", "n1", "Deployment/x", 2, 1, 0, 0, 0, 2, 3),
        ("a", "n2", "Deployment/y", 1, 0, 4, 0, 0, 1, 5),
        ("b", "n1", "Pod/z", 0, 0, 0, 1, 0, 0, 1),
    )
    totals = html.cluster_totals(store.ReportTable(COLUMNS, rows))
    assert totals["a"] == {"critical": 3, "high": 1, "medium": 4, "low": 0, "unknown": 0,
                           "fixable": 3, "total": 8}  # fmt: skip
    text = page(rows)
    assert re.findall(r'data-total="total">(\d+)<', text) == ["9"]
    assert len(re.findall(r'<rect class="bar"', text)) == 4  # a: crit, high, med; b: low


def test_nothing_on_the_page_points_outside_it() -> None:
    text = page((("a", "n", "Pod/p", 1, 0, 0, 0, 0, 0, 1),))
    assert not re.search(r"""(src|href)\s*=|url\(|@import|<script|<link""", text, re.I)
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
