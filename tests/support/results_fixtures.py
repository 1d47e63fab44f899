"""Fixtures for the results store: a connection to a fresh migrated database, report files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scanqueue import reports, store

TRIVY_DATA = Path(__file__).parents[1] / "data" / "trivy"


@pytest.fixture
def store_conn(database_url: str) -> Iterator[store.Connection]:
    """One connection to a fresh migrated database (closed after the test)."""
    with store.connect(database_url) as conn:
        yield conn


@pytest.fixture(scope="session")
def trivy_reports() -> dict[str, reports.Report]:
    """The recorded schema-2 Trivy reports, parsed, by file stem."""
    return {
        path.stem: reports.parse_file(path)
        for path in sorted(TRIVY_DATA.glob("*.json"))
        if not path.name.startswith("legacy-")
    }


def table_counts(conn: store.Connection) -> dict[str, Any]:
    """Row counts and a checksum of every results table, to compare before and after."""
    out: dict[str, Any] = {}
    for table in ("clusters", "workloads", "containers", "images", "scans", "vulnerabilities",
                  "findings"):  # fmt: skip
        row = conn.execute(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
            f" FROM {table} t"
        ).fetchone()
        assert row is not None
        out[table] = (row[0], row[1])
    return out
