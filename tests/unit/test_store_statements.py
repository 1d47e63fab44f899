"""The ingest statement's text and parameters (no database: what is sent, not what is stored)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
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


def test_cvss_json_is_what_json_dumps_writes_once_parsed() -> None:
    values = [
        {"nvd": {"V3Score": 9.8, "V2Score": 10, "V3Vector": "CVSS:3.1/AV:N"}},
        {},
        {"ghsa": {"V3Score": 1e16, "Note": 'é \u2028 " \\ \x00'}, "flag": True},
    ]
    assert json.loads(results._json(values)) == json.loads(json.dumps(values))


@pytest.mark.parametrize(
    "value",
    [
        {"nvd": {"V3Score": float("nan")}},  # Postgres refuses NaN: the ingest fails as before
        {"nvd": {"V3Score": float("inf")}},
        {"nvd": {"V3Score": None}},
        {"big": 2**70},
        {7: "key that is not a string"},
        {"lone": "\ud800"},
    ],
)
def test_cvss_json_orjson_would_write_otherwise_is_json_dumps_text(value: object) -> None:
    assert results._json([value]) == json.dumps([value])


def test_an_instant_in_two_offsets_keeps_each_its_own_text() -> None:
    utc = datetime(2024, 1, 1, 12, tzinfo=UTC)
    paris = utc.astimezone(timezone(timedelta(hours=1)))
    assert utc == paris
    assert results._times([utc, paris, None]) == [utc.isoformat(), paris.isoformat(), None]
    assert results._times([paris, utc]) == [paris.isoformat(), utc.isoformat()]


def test_parameters_of_a_recorded_report_are_those_of_the_plain_encodings() -> None:
    """What the cheaper encodings send (orjson, cached time texts) parses to what
    json.dumps and isoformat() sent before."""
    report = reports.parse_file(REPORT)
    params = results._statement_params("s1", report, datetime(2026, 1, 1, tzinfo=UTC))
    assert params is not None
    advisories = report.vulnerabilities
    assert json.loads(params["advisory_cvss"]) == [dict(v.cvss) for v in advisories]
    published = [v.published_at.isoformat() if v.published_at else None for v in advisories]
    assert params["advisory_published_at"] == results._joined(published)
    scores = [None if v.cvss_score is None else repr(v.cvss_score) for v in advisories]
    assert params["advisory_cvss_score"] == results._joined(scores)
