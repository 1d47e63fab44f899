"""``scanqueue report --format html``: the farm's results as one self-contained HTML page.

Why: the people who act on results open a file or an attachment, not a
terminal. The page holds a summary per cluster with a severity chart, the
workloads ranked (the same rows as ``scanqueue report --format json``), the
fixable criticals and highs with their fixed versions, what changed since the
previous scan, and the failing and unscanned images with their reasons.
Readable on a laptop screen, printable (print CSS).

Pure: an ``overview.Overview`` in, one HTML string out. It must never
reference anything outside the page (no script, font, stylesheet or image
URL: CSS and the SVG chart are inline, so opening the file fetches nothing)
and never print a value without escaping it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from html import escape
from typing import Any

from scanqueue import store
from scanqueue.store import overview

SEVERITIES = ("critical", "high", "medium", "low", "unknown")
COLOURS = {
    "critical": "#8e1b1b",
    "high": "#d9622b",
    "medium": "#e0b000",
    "low": "#3b7dd8",
    "unknown": "#8a8a8a",
}

_CSS = """
:root { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; }
body { margin: 0 auto; padding: 1.5rem; max-width: 1200px; line-height: 1.4; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.15rem; margin: 2rem 0 .5rem; border-bottom: 1px solid #ddd; }
.meta, .more, .empty { color: #555; font-size: .9rem; }
table { border-collapse: collapse; width: 100%; font-size: .85rem; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #eee;
         vertical-align: top; overflow-wrap: anywhere; }
th { background: #f5f5f7; position: sticky; top: 0; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.sev { display: inline-block; min-width: 4.5rem; padding: 0 .3rem; border-radius: 3px;
       color: #fff; font-size: .75rem; text-align: center; }
.critical { background: #8e1b1b; } .high { background: #d9622b; }
.medium { background: #e0b000; color: #000; } .low { background: #3b7dd8; }
.unknown { background: #8a8a8a; }
.new { color: #8e1b1b; font-weight: 600; } .resolved { color: #2e7d32; font-weight: 600; }
.cards { display: flex; flex-wrap: wrap; gap: .75rem; margin: 1rem 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .5rem .9rem; min-width: 7rem; }
.card b { display: block; font-size: 1.4rem; }
svg { max-width: 100%; height: auto; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  th { position: static; }
  h2 { break-after: avoid; }
  tr, .card { break-inside: avoid; }
  .sev, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal):
        return str(float(value))
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return escape(value.strftime("%Y-%m-%d %H:%M UTC"))
    return escape(str(value))


def _table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    numeric: Sequence[str] = (),
    row_id: str = "",
) -> str:
    head = "".join(
        f'<th class="n">{escape(c)}</th>' if c in numeric else f"<th>{escape(c)}</th>"
        for c in columns
    )
    body = []
    for row in rows:
        cells = []
        for column, value in zip(columns, row, strict=True):
            if column in numeric:
                cells.append(f'<td class="n" data-col="{escape(column)}">{_text(value)}</td>')
            elif column == "severity":
                sev = str(value).lower()
                cells.append(f'<td><span class="sev {escape(sev)}">{_text(value)}</span></td>')
            elif column == "change":
                cells.append(f'<td class="{escape(str(value))}">{_text(value)}</td>')
            else:
                cells.append(f"<td>{_text(value)}</td>")
        attr = f' class="{row_id}"' if row_id else ""
        body.append(f"<tr{attr}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def cluster_totals(workloads: store.ReportTable) -> dict[str, dict[str, int]]:
    """Per cluster, the sum over its workloads of each count column (once per workload)."""
    index = {c: i for i, c in enumerate(workloads.columns)}
    totals: dict[str, dict[str, int]] = {}
    for row in workloads.rows:
        cluster = totals.setdefault(str(row[index["cluster"]]), {})
        for column in (*SEVERITIES, "fixable", "total"):
            cluster[column] = cluster.get(column, 0) + int(row[index[column]])
    return totals


def severity_chart(totals: dict[str, dict[str, int]]) -> str:
    """An inline SVG: one stacked horizontal bar per cluster, segments by severity."""
    width, bar, gap, label_w = 720, 22, 10, 140
    scale = max([t.get("total", 0) for t in totals.values()] + [1])
    height = len(totals) * (bar + gap) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="findings by severity per cluster">'
    ]
    for i, (cluster, t) in enumerate(totals.items()):
        y = i * (bar + gap)
        parts.append(f'<text x="0" y="{y + bar - 6}" font-size="13">{escape(cluster)}</text>')
        x = float(label_w)
        for sev in SEVERITIES:
            w = (width - label_w - 60) * t.get(sev, 0) / scale
            if w > 0:
                parts.append(
                    f'<rect class="bar" data-cluster="{escape(cluster)}" data-severity="{sev}" '
                    f'data-count="{t.get(sev, 0)}" x="{x:.1f}" y="{y}" width="{w:.1f}" '
                    f'height="{bar}" fill="{COLOURS[sev]}"><title>{escape(cluster)} {sev}: '
                    f"{t.get(sev, 0)}</title></rect>"
                )
                x += w
        parts.append(
            f'<text x="{x + 6:.1f}" y="{y + bar - 6}" font-size="12">{t.get("total", 0)}</text>'
        )
    legend_y = len(totals) * (bar + gap) + 14
    for i, sev in enumerate(SEVERITIES):
        lx = label_w + i * 110
        parts.append(
            f'<rect x="{lx}" y="{legend_y - 10}" width="12" height="12" fill="{COLOURS[sev]}"/>'
            f'<text x="{lx + 16}" y="{legend_y}" font-size="12">{sev}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _section(title: str, section: overview.Section, empty: str, section_id: str) -> str:
    if not section.rows:
        return f'<h2 id="{section_id}">{escape(title)}</h2><p class="empty">{escape(empty)}</p>'
    more = ""
    if section.total > len(section.rows):
        more = (
            f'<p class="more">{section.total - len(section.rows)} more rows not shown; '
            "query the view with psql or use scanqueue report --format csv.</p>"
        )
    return (
        f'<h2 id="{section_id}">{escape(title)} <span class="meta">({section.total})</span></h2>'
        + _table(section.columns, section.rows, row_id=section_id)
        + more
    )


def render(data: overview.Overview) -> str:
    """The whole page for ``data``: one HTML document, nothing fetched when it is opened."""
    totals = cluster_totals(data.workloads)
    farm = {c: sum(t.get(c, 0) for t in totals.values()) for c in (*SEVERITIES, "fixable", "total")}
    cards = "".join(
        f'<div class="card"><span class="sev {c}">{c}</span><b data-total="{c}">{farm[c]}</b></div>'
        for c in SEVERITIES
    ) + (
        f'<div class="card">fixable<b data-total="fixable">{farm["fixable"]}</b></div>'
        f'<div class="card">total<b data-total="total">{farm["total"]}</b></div>'
    )
    summary_rows = [
        (cluster, *(t.get(c, 0) for c in (*SEVERITIES, "fixable", "total")))
        for cluster, t in totals.items()
    ]
    counts = (*SEVERITIES, "fixable", "total")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No request may leave the page, even by accident (an <img> in a future edit).
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        "<title>scanqueue report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>scanqueue: vulnerabilities of running workloads</h1>",
        f'<p class="meta">Generated {_text(data.generated_at)}. Each finding counts once per '
        "workload; counts are those of <code>scanqueue report --format json</code>.</p>",
        f'<div class="cards">{cards}</div>',
        '<h2 id="clusters">Summary per cluster</h2>',
        severity_chart(totals) if totals else '<p class="empty">No current findings.</p>',
        _table(("cluster", *counts), summary_rows, numeric=counts, row_id="cluster-row"),
        f'<h2 id="workloads">Workloads ranked <span class="meta">({len(data.workloads.rows)})'
        "</span></h2>",
        _table(data.workloads.columns, data.workloads.rows, numeric=counts, row_id="workload")
        if data.workloads.rows
        else '<p class="empty">No current findings.</p>',
        _section(
            "Fixable critical and high findings",
            data.fixable,
            "No critical or high finding has a fixed version.",
            "fixable",
        ),
        _section(
            "Changes since the previous scan",
            data.changes,
            "No repository has two successful scans yet.",
            "changes",
        ),
        _section(
            "Failing and unscanned images",
            data.unscanned,
            "Every running image has a successful scan.",
            "unscanned",
        ),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
