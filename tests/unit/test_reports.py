"""Trivy JSON parsing against the recorded real reports and broken variants of them."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scanqueue import errors, reports

DATA = Path(__file__).parents[1] / "data" / "trivy"

# (file, findings, by_severity) exactly as tests/data/trivy/README.md states them
EXPECTED = [
    ("node-alpine-3.19.json", 7, {"HIGH": 1, "MEDIUM": 2, "LOW": 2, "UNKNOWN": 2}),
    ("ecr-private-alpine-3.19.json", 29, {"HIGH": 2, "MEDIUM": 23, "LOW": 4}),
    (
        "python-debian-12-bom-crlf.json",
        212,
        {"CRITICAL": 6, "HIGH": 28, "MEDIUM": 78, "LOW": 97, "UNKNOWN": 3},
    ),
    (
        "python-slim-debian-13.json",
        128,
        {"CRITICAL": 4, "HIGH": 13, "MEDIUM": 50, "LOW": 58, "UNKNOWN": 3},
    ),
]


@pytest.mark.parametrize(("name", "count", "by_severity"), EXPECTED)
def test_fixture_report_gives_the_counts_of_its_readme(
    name: str, count: int, by_severity: dict[str, int]
) -> None:
    report = reports.parse_file(DATA / name)
    assert len(report.findings) == count
    assert report.by_severity() == by_severity
    assert list(report.by_severity()) == [s for s in reports.SEVERITIES if s in by_severity]


def test_summary_names_the_artifact_and_counts() -> None:
    report = reports.parse_file(DATA / "node-alpine-3.19.json")
    assert report.summary() == {
        "artifact": "javaneseivankov/poros-week1-web:1.0.0",
        "findings": 7,
        "by_severity": {"HIGH": 1, "MEDIUM": 2, "LOW": 2, "UNKNOWN": 2},
    }


def test_bom_and_crlf_report_is_read_with_its_metadata() -> None:
    raw = (DATA / "python-debian-12-bom-crlf.json").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw
    report = reports.parse(raw)
    assert report.scanner_version == "0.74.0"
    assert (report.os_family, report.os_name) == ("debian", "12.15")
    assert report.image_id == (
        "sha256:d96b53d4a675765db51a259f262ca83c1366e05db65c4cc051ac7b4489e04e4c"
    )
    assert report.repo_digests == (
        "python-test@sha256:d96b53d4a675765db51a259f262ca83c1366e05db65c4cc051ac7b4489e04e4c",
    )
    assert report.created_at == datetime(2026, 8, 20, 9, 49, 43, 432455, tzinfo=UTC)
    # the same text decoded to str (BOM kept as U+FEFF) parses the same
    assert len(reports.parse(raw.decode("utf-8")).findings) == 212


def test_finding_carries_package_versions_and_advisory() -> None:
    report = reports.parse_file(DATA / "ecr-private-alpine-3.19.json")
    first = report.findings[0]
    assert first.vulnerability.id == "CVE-2023-42363"
    assert (first.package, first.installed_version, first.fixed_version) == (
        "busybox",
        "1.36.1-r15",
        "1.36.1-r17",
    )
    assert first.status == "fixed" and first.fixable
    assert first.result_class == "os-pkgs" and first.result_type == "alpine"
    assert first.target.endswith("(alpine 3.19.1)")
    assert first.vulnerability.cvss_score == 5.5  # NVD wins over Red Hat's 7.8
    assert first.vulnerability.url == "https://avd.aquasec.com/nvd/cve-2023-42363"
    assert first.vulnerability.published_at == datetime(2023, 11, 27, 22, 15, 7, 940000, UTC)
    assert {r.result_class for r in report.results} == {"os-pkgs", "lang-pkgs"}


def test_vulnerabilities_are_unique_per_id() -> None:
    report = reports.parse_file(DATA / "python-debian-12-bom-crlf.json")
    ids = [v.id for v in report.vulnerabilities]
    assert len(ids) == len(set(ids))
    assert set(ids) == {f.vulnerability.id for f in report.findings}


def test_legacy_top_level_list_is_refused_by_name() -> None:
    with pytest.raises(reports.InvalidReport, match="legacy Trivy JSON") as caught:
        reports.parse_file(DATA / "legacy-list-debian-10.8.json")
    assert isinstance(caught.value, errors.PermanentError)
    assert "SchemaVersion 2" in str(caught.value)


def test_report_cut_in_half_is_refused_with_only_its_first_bytes() -> None:
    raw = (DATA / "python-slim-debian-13.json").read_bytes()
    half = raw[: len(raw) // 2]
    with pytest.raises(reports.InvalidReport, match="truncated JSON") as caught:
        reports.parse(half, source="pod scan-1")
    message = str(caught.value)
    assert message.startswith("pod scan-1: ")
    assert "\n" not in message
    assert len(message) < 300
    assert "SchemaVersion" in message  # the first bytes are shown


def test_log_text_is_refused_as_not_json() -> None:
    log = "2024-11-09T13:47:27Z\tFATAL\tunable to initialize a scanner: UNAUTHORIZED\n" * 50
    with pytest.raises(reports.InvalidReport, match="not JSON") as caught:
        reports.parse(log)
    assert "FATAL" in str(caught.value)
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty output"),
        ("   \r\n", "empty output"),
        ('"just a string"', "expected a JSON object"),
        ('{"Results": []}', "SchemaVersion None is not supported"),
        ('{"SchemaVersion": 1, "Results": []}', "SchemaVersion 1 is not supported"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_other_unusable_outputs_are_refused(text: str | bytes, reason: str) -> None:
    with pytest.raises(reports.InvalidReport, match=reason):
        reports.parse(text)


def _minimal(**vulnerability: object) -> dict[str, object]:
    entry = {
        "VulnerabilityID": "CVE-1",
        "PkgName": "openssl",
        "InstalledVersion": "1.0",
        "Severity": "HIGH",
        **vulnerability,
    }
    return {
        "SchemaVersion": 2,
        "ArtifactName": "app:1",
        "NewTopLevelField": {"anything": True},
        "Results": [
            {"Target": "app:1 (debian 12)", "Class": "os-pkgs", "Type": "debian"},
            {"Target": "Python", "Vulnerabilities": None},
            {"Target": "Java", "Vulnerabilities": [entry]},
        ],
    }


def test_missing_vulnerabilities_unknown_fields_and_missing_status_are_tolerated() -> None:
    report = reports.parse(json.dumps(_minimal(SomethingNew=[1, 2])))
    assert len(report.results) == 3
    assert [len(r.findings) for r in report.results] == [0, 0, 1]
    finding = report.findings[0]
    assert finding.status is None and finding.result_class is None
    assert finding.fixed_version == "" and not finding.fixable
    assert report.scanner_version is None and report.os_family is None
    assert report.created_at is None


def test_missing_required_field_is_named() -> None:
    doc = _minimal()
    del doc["Results"][2]["Vulnerabilities"][0]["PkgName"]  # type: ignore[index]
    with pytest.raises(reports.InvalidReport, match=r"Results\.2\.Vulnerabilities\.0\.PkgName"):
        reports.parse(json.dumps(doc))


def test_unknown_severity_is_refused() -> None:
    with pytest.raises(reports.InvalidReport, match="must be one of CRITICAL"):
        reports.parse(json.dumps(_minimal(Severity="SEVERE")))


def test_lowercase_severity_is_normalised() -> None:
    report = reports.parse(json.dumps(_minimal(Severity="critical")))
    assert report.by_severity() == {"CRITICAL": 1}


def test_nanosecond_and_offset_times_are_read() -> None:
    report = reports.parse_file(DATA / "node-alpine-3.19.json")
    assert report.created_at is not None
    assert report.created_at.utcoffset() is not None
    assert report.created_at.microsecond == 449802


def test_severity_rank_orders_unknown_lowest() -> None:
    ranks = [reports.severity_rank(s) for s in reports.SEVERITIES]
    assert ranks == sorted(ranks, reverse=True)
    assert reports.severity_rank("low") == 1
    with pytest.raises(ValueError, match="expected one of"):
        reports.severity_rank("bad")


def test_findings_and_vulnerabilities_are_computed_once_and_follow_replace() -> None:
    report = reports.parse_file(DATA / "node-alpine-3.19.json")
    assert report.findings is report.findings
    assert report.vulnerabilities is report.vulnerabilities
    emptied = dataclasses.replace(report, results=())
    assert (emptied.findings, emptied.vulnerabilities) == ((), ())
    assert emptied == dataclasses.replace(report, results=())  # equality is the fields'
    assert report == reports.parse_file(DATA / "node-alpine-3.19.json")
