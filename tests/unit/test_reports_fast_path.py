"""The quick checks of a report agree with the marshmallow schema they stand in for.

``reports.parse`` has msgspec decode a report's bytes into structs of the schemas'
types, and check the entries of a ``Vulnerabilities`` list in text (the schema costs
~0.1 ms an entry); the schema still words every refusal.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import marshmallow
import msgspec
import pytest

from scanqueue import reports

TRIVY = Path(__file__).parents[1] / "data" / "trivy"
RECORDED = sorted(p for p in TRIVY.glob("*.json") if "legacy" not in p.name)


def _through_schema(document: dict[str, Any]) -> reports.Report:
    loaded = reports._REPORT_SCHEMA.load(document)
    return reports._build(msgspec.convert(loaded, reports._TypedReport), "schema")


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.name)
def test_recorded_report_parses_to_what_the_full_schema_gives(path: Path) -> None:
    document = json.loads(path.read_bytes().decode("utf-8-sig"))
    parsed = reports.parse(path.read_bytes())
    assert parsed == _through_schema(document)
    assert [f.vulnerability.cvss for f in parsed.findings] == [
        f.vulnerability.cvss for f in _through_schema(document).findings
    ]


def _report(entry: dict[str, Any]) -> str:
    return json.dumps(
        {"SchemaVersion": 2, "Results": [{"Target": "app", "Vulnerabilities": [entry]}]}
    )


ENTRY = {"VulnerabilityID": "CVE-1", "PkgName": "openssl", "Severity": "HIGH"}


def test_entry_with_only_the_required_fields_gets_the_schema_defaults() -> None:
    [finding] = reports.parse(_report(ENTRY)).findings
    assert finding == _through_schema(json.loads(_report(ENTRY))).findings[0]
    assert (finding.installed_version, finding.fixed_version, finding.status) == ("", "", None)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"Title": 7}, "Title"),
        ({"PkgName": None}, "PkgName"),
        ({"CVSS": ["nvd"]}, "CVSS"),
        ({"Severity": "SEVERE"}, "Severity"),
        ({"FixedVersion": ["1.2"]}, "FixedVersion"),
    ],
)
def test_bad_entry_is_refused_naming_its_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(reports.InvalidReport, match=field):
        reports.parse(_report({**ENTRY, **change}), source="pod log")


def test_vulnerabilities_that_is_not_a_list_is_refused() -> None:
    text = json.dumps({"SchemaVersion": 2, "Results": [{"Target": "a", "Vulnerabilities": {}}]})
    with pytest.raises(reports.InvalidReport, match="Vulnerabilities"):
        reports.parse(text)


def test_what_only_the_standard_library_decodes_is_still_read() -> None:
    """The decoder is orjson, falling back to ``json``: NaN and integers past 64 bits (which
    orjson refuses) are read as before, and the refusals keep ``json``'s wording."""
    entry = {"VulnerabilityID": "CVE-1", "PkgName": "openssl", "Severity": "HIGH",
             "CVSS": {"nvd": {"V3Score": float("nan")}}, "Huge": 2**70}  # fmt: skip
    parsed = reports.parse(_report(entry))
    assert [f.vulnerability.id for f in parsed.findings] == ["CVE-1"]
    cut = _report(entry)[:-20]
    refusal = rf"truncated JSON \(Expecting .,. delimiter at character {len(cut)} of {len(cut)}\)"
    with pytest.raises(reports.InvalidReport, match=refusal):
        reports.parse(cut)


def test_bytes_are_decoded_as_they_are_and_read_as_the_text_is() -> None:
    """A pod log's bytes go to msgspec without a text in between (byte-order mark skipped);
    whatever it refuses in them takes the text way, so bytes and their text agree: same
    report, same refusals (but for bytes in fields never read: below)."""
    recorded = (TRIVY / "python-debian-12-bom-crlf.json").read_bytes()
    assert recorded.startswith(b"\xef\xbb\xbf") and recorded.endswith(b"\r\n")
    assert reports.parse(recorded) == reports.parse(recorded.decode("utf-8-sig"))
    entry = {"VulnerabilityID": "CVE-1", "PkgName": "openssl", "Severity": "HIGH",
             "CVSS": {"nvd": {"V3Score": float("nan")}}, "Huge": 2**70}  # fmt: skip
    for text in (_report(entry), _report(entry) + "\x0c\x1f", "\ufeff " + _report(entry)):
        assert reports.parse(text.encode()) == reports.parse(text)
    for bad, refusal in (
        (b"", "empty output"),
        (b"\xef\xbb\xbf \r\n", "empty output"),
        (_report(entry).encode()[:-20], "truncated JSON"),
        (b'{"SchemaVersion": 2, "ArtifactName": "\xff"}', r"not UTF-8 text \(byte 38\)"),
        (b'{"SchemaVersion": 2, "Results": {"Target": "x"}}', "Results: Not a valid list"),
        (
            b'{"SchemaVersion": 2, "Results": [{"Target": "x", "Vulnerabilities": [7]}]}',
            "Results.0.Vulnerabilities.0._schema: Invalid input type",
        ),
        (b"null", "expected a JSON object"),
    ):
        with pytest.raises(reports.InvalidReport, match=refusal):
            reports.parse(bad)


def test_a_field_that_is_never_read_is_skipped_unread() -> None:
    """msgspec skips what a Report is not built from (Packages, Descriptions, References:
    most of a report with --list-all-pkgs) without building it, and without checking its
    strings' UTF-8: a byte that is not UTF-8 there costs nothing and changes nothing. One in
    a field that is read is refused, naming the byte (above)."""
    entry = {"VulnerabilityID": "CVE-1", "PkgName": "openssl", "Severity": "HIGH"}
    good = _report(entry).encode()
    bad = good[:-1] + b', "Packages": [{"Name": "\xff\xfe", "Licenses": ["\xc3"]}]}'
    assert reports.parse(bad) == reports.parse(good)


def _reference_findings(document: dict[str, Any]) -> list[reports.Finding]:
    """The findings as the dataclasses' own __init__ builds them, one advisory per entry."""
    found = []
    for result in document.get("Results") or []:
        for raw in result.get("Vulnerabilities") or []:
            cvss = raw.get("CVSS") or {}
            vulnerability = reports.Vulnerability(
                id=raw["VulnerabilityID"],
                severity=raw["Severity"].upper(),
                title=raw.get("Title") or "",
                url=raw.get("PrimaryURL") or "",
                cvss_score=reports._cvss_score(cvss),
                cvss=cvss,
                published_at=reports._time(raw.get("PublishedDate"), "PublishedDate", "t"),
                modified_at=reports._time(raw.get("LastModifiedDate"), "LastModifiedDate", "t"),
            )
            found.append(
                reports.Finding(
                    vulnerability=vulnerability,
                    package=raw["PkgName"],
                    installed_version=raw.get("InstalledVersion") or "",
                    fixed_version=raw.get("FixedVersion") or "",
                    status=raw.get("Status"),
                    target=result["Target"],
                    result_class=result.get("Class"),
                    result_type=result.get("Type"),
                    package_path=raw.get("PkgPath") or "",
                )
            )
    return found


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.name)
def test_findings_are_what_the_dataclass_constructors_build(path: Path) -> None:
    """``_build`` skips the frozen dataclasses' __init__ and shares one Vulnerability among
    the entries of an advisory: every field is still there, in order, with its value."""
    parsed = reports.parse(path.read_bytes()).findings
    reference = _reference_findings(json.loads(path.read_bytes().decode("utf-8-sig")))
    assert parsed == tuple(reference)
    for got, expected in zip(parsed, reference, strict=True):
        assert vars(got) == vars(expected) and list(vars(got)) == list(vars(expected))
        assert vars(got.vulnerability) == vars(expected.vulnerability)
        assert list(vars(got.vulnerability)) == list(vars(expected.vulnerability))


def _two_entries(second: dict[str, Any]) -> str:
    first = {**ENTRY, "Title": "overflow", "CVSS": {"nvd": {"V3Score": 7.5}},
             "PublishedDate": "2024-01-02T03:04:05Z"}  # fmt: skip
    entries = [first, {**first, "PkgName": "libssl3", **second}]
    return json.dumps(
        {"SchemaVersion": 2, "Results": [{"Target": "app", "Vulnerabilities": entries}]}
    )


BOTH_WAYS = pytest.mark.parametrize("encode", [str, str.encode], ids=["text", "bytes"])


@BOTH_WAYS
def test_entries_of_one_advisory_worded_alike_share_one_vulnerability(encode: Any) -> None:
    first, second = reports.parse(encode(_two_entries({}))).findings
    assert first.vulnerability is second.vulnerability
    assert (first.package, second.package) == ("openssl", "libssl3")


@pytest.mark.parametrize(
    "second",
    [
        {"CVSS": {"nvd": {"V3Score": 9.8}}},
        {"CVSS": {"nvd": {"V3Score": 7.5}, "redhat": {"V3Score": 8.0}}},
        {"CVSS": None},
        {"Title": "overflow in the parser"},
        {"Severity": "CRITICAL"},
        {"PrimaryURL": "https://example.com"},
        {"PublishedDate": "2024-01-02T03:04:06Z"},
        {"LastModifiedDate": "2024-02-02T03:04:05Z"},
    ],
    ids=str,
)
@BOTH_WAYS
def test_entries_of_one_advisory_worded_apart_keep_each_their_own(
    second: dict[str, Any], encode: Any
) -> None:
    """Each finding keeps what its own entry says; ``Report.vulnerabilities`` the first."""
    text = _two_entries(second)
    report = reports.parse(encode(text))
    first, other = report.findings
    assert first.vulnerability is not other.vulnerability
    assert report.findings == tuple(_reference_findings(json.loads(text)))
    assert [vars(f.vulnerability) for f in report.findings] == [
        vars(f.vulnerability) for f in _reference_findings(json.loads(text))
    ]
    assert report.vulnerabilities == (first.vulnerability,)


def test_entries_with_a_nan_score_are_each_read() -> None:
    text = _two_entries({}).replace("7.5", "NaN")  # two NaN: not equal, so not shared
    scores = [f.vulnerability.cvss_score for f in reports.parse(text).findings]
    assert len(scores) == 2 and all(s is not None and math.isnan(s) for s in scores)


def test_a_bad_time_in_a_later_entry_of_an_advisory_is_still_refused() -> None:
    with pytest.raises(reports.InvalidReport, match="PublishedDate 'yesterday' is not an RFC"):
        reports.parse(_two_entries({"PublishedDate": "yesterday"}))


def test_recorded_reports_are_decoded_the_quick_way() -> None:
    """The recorded reports' bytes need no second decoding (the point of the typed structs)."""
    for path in RECORDED:
        assert reports._decode_typed(path.read_bytes()) is not None, path.name


def _outcome(data: str | bytes) -> reports.Report | str:
    try:
        return reports.parse(data, source="pod log")
    except reports.InvalidReport as e:
        return str(e)


def _schema_outcome(text: str) -> reports.Report | str:
    """What the full schema makes of ``text`` (with SchemaVersion 2): the report or the refusal."""
    try:
        loaded = reports._REPORT_SCHEMA.load(json.loads(text))
    except marshmallow.ValidationError as e:
        return f"pod log: not a valid Trivy report: {reports._first_error(e)}"
    try:
        return reports._build(msgspec.convert(loaded, reports._TypedReport), "pod log")
    except reports.InvalidReport as e:
        return str(e)


def _document(entry: Any, **top: Any) -> str:
    """Two entries, the second ``entry``, and a top level changed by ``top``."""
    results = [{"Target": "app", "Class": "os-pkgs", "Vulnerabilities": [ENTRY, entry]}]
    return json.dumps({"SchemaVersion": 2, "Results": results, **top})


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in ENTRY.items() if k != key}


@pytest.mark.parametrize(
    "text",
    [
        _document({**ENTRY, "Title": 7}),
        _document({**ENTRY, "PkgPath": ["a"]}),
        _document({**ENTRY, "CVSS": "nvd"}),
        _document({**ENTRY, "CVSS": {"nvd": {"V3Score": float("nan")}}}),
        _document({**ENTRY, "Severity": "SEVERE"}),
        _document({**ENTRY, "Severity": 3}),
        _document(_without("VulnerabilityID")),
        _document(_without("Severity")),
        _document(7),
        _document(ENTRY, SchemaVersion=2.0),
        _document(ENTRY, ArtifactName=1),
        _document(ENTRY, Trivy=[1]),
        _document(ENTRY, Trivy={"Version": 74}),
        _document(ENTRY, Metadata={"OS": "alpine"}),
        _document(ENTRY, Metadata={"RepoDigests": "repo@sha256:00"}),
        _document(ENTRY, Results=[{"Target": None}]),
        _document(ENTRY, Results=[{"Target": "app", "Vulnerabilities": {}}]),
        _document(ENTRY, Results=[{"Target": "app", "Class": 1}]),
    ],
    ids=lambda text: text[:110],
)
def test_what_msgspec_refuses_is_read_or_refused_as_the_schema_says(text: str) -> None:
    """A report whose read fields are not of the schemas' types takes the schemas' way, from
    bytes as from text: the same report, or the schema's refusal word for word."""
    assert reports._decode_typed(text.encode()) is None
    expected = _schema_outcome(text)
    assert _outcome(text.encode()) == _outcome(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        _document({**ENTRY, "Severity": "high"}),
        _document({**ENTRY, "Severity": "Critical", "Title": None, "CVSS": None}),
        _document({**ENTRY, "CVSS": {"nvd": {"V3Score": 2**70}}}),
        _document({**ENTRY, "PublishedDate": "2024-01-02T03:04:05.123456789Z"}),
        _document({**ENTRY, "PublishedDate": "yesterday"}),
        _document(ENTRY, CreatedAt="today"),
        _document(ENTRY, Trivy=None, Metadata=None, ArtifactName=None),
        _document(ENTRY, Trivy={}, Metadata={"OS": None, "RepoDigests": None}),
        _document(ENTRY, Metadata={"OS": {"Family": "alpine"}, "RepoDigests": ["r@sha256:0"]}),
        _document(ENTRY, Results=[{"Target": "app", "Vulnerabilities": None}]),
    ],
    ids=lambda text: text[:110],
)
def test_what_msgspec_takes_is_read_or_refused_as_the_schema_says(text: str) -> None:
    """The typed structs take what the schemas take (lower-case severities too): from bytes
    as from text, the same report (advisories shared alike), or the same refusal of a time."""
    assert reports._decode_typed(text.encode()) is not None
    expected = _schema_outcome(text)
    assert _outcome(text.encode()) == _outcome(text) == expected
    if isinstance(expected, reports.Report):
        for report in (reports.parse(text.encode()), reports.parse(text)):
            assert [vars(f.vulnerability) for f in report.findings] == [
                vars(f.vulnerability) for f in expected.findings
            ]


def _validated(schema: marshmallow.Schema) -> list[str]:
    found = []
    for name, field in schema.fields.items():
        inner = field.inner if isinstance(field, marshmallow.fields.List) else field
        if isinstance(inner, marshmallow.fields.Nested):
            found += [f"{name}.{n}" for n in _validated(inner.schema)]
        if field.validators or inner.validators:
            found.append(name)
    return found


def test_the_only_check_the_typed_structs_leave_to_python_is_severity() -> None:
    """msgspec's structs carry the schemas' types, not their validators: a validator added
    to another field would not run on the quick way (``_severities_known`` runs Severity's)."""
    assert _validated(reports._REPORT_SCHEMA) == ["Results.Vulnerabilities.Severity"]
