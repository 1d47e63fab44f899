"""docs/views.md lists exactly the columns of every view of a migrated database."""

from __future__ import annotations

import re
from pathlib import Path

from scanqueue import store

DOC = Path(__file__).resolve().parents[2] / "docs" / "views.md"


def documented_columns() -> dict[str, set[str]]:
    """View name -> the backticked names in the first column of its section's table."""
    out: dict[str, set[str]] = {}
    for section in re.split(r"^## ", DOC.read_text(encoding="utf-8"), flags=re.M)[1:]:
        heading = re.match(r"`(\w+)`", section)
        assert heading, section[:40]
        columns: set[str] = set()
        for line in section.splitlines():
            cells = line.split("|")
            if line.startswith("|") and len(cells) > 2 and "`" in cells[1]:
                columns |= set(re.findall(r"`(\w+)`", cells[1]))
        out[heading.group(1)] = columns
    return out


def test_views_doc_lists_every_column_of_every_view(database_url: str) -> None:
    with store.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name IN "
            "(SELECT table_name FROM information_schema.views "
            " WHERE table_schema = current_schema())"
        ).fetchall()
    actual: dict[str, set[str]] = {}
    for view, column in rows:
        actual.setdefault(str(view), set()).add(str(column))
    assert actual, "no views in the migrated database"
    assert documented_columns() == actual
