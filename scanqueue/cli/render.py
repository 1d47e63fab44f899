"""Renderers for ``scanqueue report``: a table that fits the terminal, CSV and JSON.

Pure: rows in, text out. It must never query anything or print.
"""

from __future__ import annotations

from collections.abc import Sequence


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


def _json_value(value: object) -> object:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return float(value)
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return value


def as_json(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    import json

    return json.dumps(
        [{c: _json_value(v) for c, v in zip(columns, row, strict=True)} for row in rows],
        indent=2,
    )


def as_csv(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_cell(v) for v in row] for row in rows)
    return out.getvalue()


def terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((120, 24)).columns


def _short_digest(text: str) -> str:
    """``sha256:`` and 12 hex digits, as ``docker images`` shows IDs; full in CSV and JSON."""
    return text[:19] if text.startswith("sha256:") and len(text) > 19 else text


# count columns are narrow; their headers should be too
_SHORT_HEADERS = {
    "critical": "crit",
    "medium": "med",
    "unknown": "unkn",
    "fixable": "fix",
    "workloads": "wkld",
    "vulnerability_id": "vulnerability",
}


def as_table(columns: Sequence[str], rows: Sequence[Sequence[object]], *, width: int) -> str:
    """A plain-text table no wider than ``width``: the widest columns are cut with '…'."""
    from decimal import Decimal

    headers = [_SHORT_HEADERS.get(c, c) for c in columns]
    cells = [[_short_digest(_cell(v)) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], int | float | Decimal) or row[i] is None for row in rows)
        for i in range(len(columns))
    ]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(headers)]
    gap = 2
    while sum(widths) + gap * (len(widths) - 1) > width:
        # numbers are never cut; the widest text column gives way first
        widest = max(range(len(widths)), key=lambda i: -1 if numeric[i] else widths[i])
        if widths[widest] <= 8:  # nothing sensible left to cut; let the terminal wrap
            break
        widths[widest] -= 1

    def fit(text: str, i: int) -> str:
        if len(text) > widths[i]:  # image names differ at their end, the rest at the start
            cut = widths[i] - 1
            text = "…" + text[-cut:] if columns[i] == "image" else text[:cut] + "…"
        return text.rjust(widths[i]) if numeric[i] else text.ljust(widths[i])

    lines = [[fit(c.upper(), i) for i, c in enumerate(headers)]]
    lines += [[fit(v, i) for i, v in enumerate(row)] for row in cells]
    return "\n".join((" " * gap).join(line).rstrip() for line in lines)
