"""`scanqueue report`, `reports parse` and `reports import` against a real PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from scanqueue import cli, reports, store
from tests.support import results_fixtures as inv

DATA = inv.TRIVY_DATA


@pytest.fixture
def inventory_url(database_url: str, trivy_reports: dict[str, reports.Report]) -> str:
    with store.connect(database_url) as conn:
        inv.build_inventory(conn, trivy_reports)
        conn.commit()
    return database_url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_report_json_by_workload_has_one_object_per_workload(
    inventory_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "report", "--database-url", inventory_url, "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["cluster"], r["namespace"], r["workload"], r["total"]) for r in rows] == [
        ("prod-eu", "team-a", "Deployment/web", 212),
        ("prod-us", "team-a", "Deployment/web", 212),
        ("prod-eu", "team-b", "Deployment/api", 7),
    ]
    assert {k: rows[0][k] for k in ("critical", "high", "medium", "low", "unknown")} == {
        "critical": 6,
        "high": 28,
        "medium": 78,
        "low": 97,
        "unknown": 3,
    }


def test_report_csv_filters_cluster_namespace_severity_and_fixable(
    inventory_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "report", "--database-url", inventory_url, "--format", "csv",
        "--cluster", "prod-eu", "--namespace", "team-b", "--min-severity", "medium", "--fixable",
    )  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows == [
        {
            "cluster": "prod-eu",
            "namespace": "team-b",
            "workload": "Deployment/api",
            "critical": "0",
            "high": "1",
            "medium": "2",
            "low": "0",
            "unknown": "0",
            "fixable": "3",
            "total": "3",
        }
    ]


def test_report_by_image_counts_workloads_across_clusters(
    inventory_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "report", "--database-url", inventory_url, "--format", "json", "--by", "image"
    )
    assert code == 0
    rows = json.loads(out)
    assert [(r["image"], r["digest"], r["clusters"], r["workloads"], r["total"]) for r in rows] == [
        (f"{inv.REGISTRY}/team/web", inv.WEB, "prod-eu,prod-us", 2, 212),
        (f"{inv.REGISTRY}/team/api", inv.API, "prod-eu", 1, 7),
    ]


def test_report_by_vulnerability_lists_critical_advisories_first(
    inventory_url: str, capsys: pytest.CaptureFixture[str], trivy_reports: dict[str, reports.Report]
) -> None:
    code, out, _ = run(
        capsys, "report", "--database-url", inventory_url, "--format", "json",
        "--by", "vulnerability", "--min-severity", "CRITICAL",
    )  # fmt: skip
    assert code == 0
    rows = json.loads(out)
    expected = {
        f.vulnerability.id
        for f in trivy_reports["python-debian-12-bom-crlf"].findings
        if f.severity == "CRITICAL"
    }
    assert {r["vulnerability_id"] for r in rows} == expected
    assert all(r["severity"] == "CRITICAL" and r["workloads"] == 2 for r in rows)
    scores = [r["cvss"] for r in rows if r["cvss"] is not None]
    assert scores == sorted(scores, reverse=True)


def test_report_table_fits_the_terminal(
    inventory_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run(capsys, "report", "--database-url", inventory_url, "--by", "image")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["IMAGE", "DIGEST", "CLUSTERS", "WKLD"]
    assert len(lines) == 3
    assert all(len(line) <= 80 for line in lines)
    assert lines[1].split()[0].endswith("/team/web") and lines[1].split()[-1] == "212"


def test_report_with_no_match_says_so(
    inventory_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "report", "--database-url", inventory_url, "--cluster", "nowhere")
    assert (code, out) == (0, "")
    assert "no current findings match" in err
    code, out, _ = run(
        capsys, "report", "--database-url", inventory_url, "--cluster", "nowhere", "--format",
        "json",
    )  # fmt: skip
    assert json.loads(out) == []


def test_reports_parse_prints_counts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "reports", "parse", str(DATA / "python-debian-12-bom-crlf.json"))
    assert code == 0
    assert json.loads(out) == {
        "artifact": "python-test:baseline",
        "findings": 212,
        "by_severity": {"CRITICAL": 6, "HIGH": 28, "MEDIUM": 78, "LOW": 97, "UNKNOWN": 3},
    }


def test_reports_parse_refuses_legacy_and_truncated_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "reports", "parse", str(DATA / "legacy-list-debian-10.8.json"))
    assert (code, out) == (2, "")
    assert "legacy Trivy JSON" in err and err.count("\n") == 1
    half = tmp_path / "half.json"
    raw = (DATA / "node-alpine-3.19.json").read_bytes()
    half.write_bytes(raw[: len(raw) // 2])
    code, out, err = run(capsys, "reports", "parse", str(half))
    assert (code, out) == (2, "")
    assert "truncated JSON" in err and err.count("\n") == 1 and len(err) < 400


def test_reports_import_stores_a_ci_report_once(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = "sha256:" + "9" * 64
    argv = [
        "reports", "import", str(DATA / "ecr-private-alpine-3.19.json"), "--cluster", "ci",
        "--image", f"registry.example.com/team/api@{digest}", "--database-url", database_url,
    ]  # fmt: skip
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "29 findings (2 HIGH, 23 MEDIUM, 4 LOW)" in out
    code, again, _ = run(capsys, *argv)
    assert code == 0 and again == out
    with store.connect(database_url) as conn:
        rows = conn.execute("SELECT id, mode, status FROM scans").fetchall()
        assert len(rows) == 1 and rows[0][1:] == ("import", "succeeded")
        assert conn.execute("SELECT count(*) FROM findings").fetchone() == (29,)
    code, out, err = run(capsys, *argv[:5], "--image", "nginx:1.25", *argv[7:])
    assert code == 2 and "not pinned by digest" in err
