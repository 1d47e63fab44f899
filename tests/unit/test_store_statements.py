"""The ingest statement's text and parameters (no database: what is sent, not what is stored)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from psycopg import _queries

from scanqueue import reports
from scanqueue.store import results

REPORT = Path(__file__).parent.parent / "data" / "trivy" / "python-debian-12-bom-crlf.json"


def test_the_ingest_statement_is_short_enough_for_psycopg_to_cache_its_parsing() -> None:
    # Longer statements are parsed again on every execute (~0.5 ms per report).
    assert len(results._INGEST) <= _queries.MAX_CACHED_STATEMENT_LENGTH
    assert "--" not in results._INGEST


def test_values_are_joined_with_a_trailing_separator_and_none_as_the_null_mark() -> None:
    assert results._joined([]) == "\x1f"
    assert results._joined([""]) == "\x1f"
    assert results._joined(["a", None, ""]) == "a\x1f\x1e\x1f\x1f"


def test_a_value_holding_a_separator_cannot_be_joined() -> None:
    assert results._joined(["a\x1fb"]) is None
    assert results._joined(["\x1e"]) is None
    assert results._joined([None, "x\x1e"]) is None


def test_every_column_holds_one_value_per_finding_or_advisory() -> None:
    report = reports.parse_file(REPORT)
    params = results._statement_params("s1", report, datetime(2026, 1, 1, tzinfo=UTC))
    assert params is not None
    assert (params["n_findings"], params["n_advisories"]) == (212, len(report.vulnerabilities))
    assert len(json.loads(params["advisory_cvss"])) == params["n_advisories"]
    for name, value in params.items():
        if name.startswith("finding_"):
            assert value.count("\x1f") == 212, name
        elif name.startswith("advisory_") and name != "advisory_cvss":
            assert value.count("\x1f") == params["n_advisories"], name
