"""Trivy JSON reports (schema version 2) to frozen domain objects.

A scan pod's log, or a file from a CI pipeline, is untrusted text: this module
turns it into a ``Report`` or refuses it with an ``InvalidReport`` whose
one-line message says what is wrong and shows at most the first bytes of the
input, never the whole log. Pure: no I/O beyond ``parse_file`` reading the file
it is given; it never imports the store, a client or the network.

A *finding* is one entry of a ``Vulnerabilities`` list; the same advisory in
two packages is two findings of one ``Vulnerability``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import marshmallow
import msgspec
import orjson
from marshmallow import fields

from scanqueue import errors

SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")  # most severe first
_RANK = {name: len(SEVERITIES) - 1 - i for i, name in enumerate(SEVERITIES)}  # UNKNOWN = 0
_PREVIEW = 60  # characters of the input shown in a refusal


class InvalidReport(errors.PermanentError):
    """The text is not a Trivy schema-2 JSON report; the message says why and how it starts."""


def severity_rank(severity: str) -> int:
    """0 for UNKNOWN up to 4 for CRITICAL; raise ``ValueError`` naming the allowed values."""
    try:
        return _RANK[severity.upper()]
    except KeyError:
        raise ValueError(
            f"unknown severity {severity!r}; expected one of {', '.join(SEVERITIES)}"
        ) from None


@dataclasses.dataclass(frozen=True)
class Vulnerability:
    """One advisory as the report describes it (stored once per ID, updated by newer reports)."""

    id: str  # "CVE-2023-42363", "GHSA-...", "DLA-..."
    severity: str  # one of SEVERITIES
    title: str = ""
    url: str = ""  # PrimaryURL
    cvss_score: float | None = None  # NVD V3 score if present, else the highest V3 (then V2)
    cvss: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    published_at: datetime | None = None
    modified_at: datetime | None = None


@dataclasses.dataclass(frozen=True)
class Finding:
    """One entry of a ``Vulnerabilities`` list: an advisory in one installed package."""

    vulnerability: Vulnerability
    package: str  # PkgName
    installed_version: str
    fixed_version: str  # "" when no fix is known
    status: str | None  # "fixed", "affected", "will_not_fix"...; absent in older reports
    target: str  # the Result's Target, e.g. "app:1 (debian 12.15)" or "Python"
    result_class: str | None  # "os-pkgs", "lang-pkgs"...; absent in older reports
    result_type: str | None  # "debian", "python-pkg"...
    package_path: str = ""  # PkgPath, for language packages

    @property
    def severity(self) -> str:
        return self.vulnerability.severity

    @property
    def fixable(self) -> bool:
        return bool(self.fixed_version)


@dataclasses.dataclass(frozen=True)
class Result:
    target: str
    result_class: str | None
    result_type: str | None
    findings: tuple[Finding, ...]


@dataclasses.dataclass(frozen=True)
class Report:
    """A parsed Trivy report: what was scanned, by which Trivy, and its findings."""

    artifact: str  # ArtifactName
    artifact_type: str  # "container_image", "filesystem"...
    created_at: datetime | None
    scanner_version: str | None  # Trivy.Version (absent before Trivy 0.50)
    os_family: str | None  # Metadata.OS.Family: "alpine", "debian"...
    os_name: str | None  # Metadata.OS.Name: "3.19.4"
    image_id: str | None  # Metadata.ImageID: the config digest "sha256:..."
    repo_digests: tuple[str, ...]  # Metadata.RepoDigests: "repo@sha256:..."
    results: tuple[Result, ...]

    # Computed once per Report (the fields are frozen, and the ingest, the logs and the
    # counts each ask again); kept out of equality, repr and dataclasses.replace's copy.
    @functools.cached_property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(f for r in self.results for f in r.findings)

    @functools.cached_property
    def vulnerabilities(self) -> tuple[Vulnerability, ...]:
        """One per ID, first occurrence wins, in report order."""
        seen: dict[str, Vulnerability] = {}
        for finding in self.findings:
            seen.setdefault(finding.vulnerability.id, finding.vulnerability)
        return tuple(seen.values())

    def by_severity(self) -> dict[str, int]:
        """Findings per severity, most severe first; severities with no finding are left out."""
        counts = {s: 0 for s in SEVERITIES}
        for finding in self.findings:
            counts[finding.severity] += 1
        return {s: n for s, n in counts.items() if n}

    def summary(self) -> dict[str, Any]:
        """``{"artifact": ..., "findings": N, "by_severity": {...}}`` for ``reports parse``."""
        return {
            "artifact": self.artifact,
            "findings": len(self.findings),
            "by_severity": self.by_severity(),
        }


# ------------------------------------------------------------------ wire schemas


def _known_severity(value: str) -> bool:
    return value.upper() in _RANK


def _check_severity(value: str) -> None:
    if not _known_severity(value):
        raise marshmallow.ValidationError(f"{value!r} must be one of {', '.join(SEVERITIES)}")


class _Schema(marshmallow.Schema):
    class Meta:
        unknown = marshmallow.EXCLUDE  # Trivy adds fields in every release


class _OSSchema(_Schema):
    Family = fields.String(load_default=None, allow_none=True)
    Name = fields.String(load_default=None, allow_none=True)


class _MetadataSchema(_Schema):
    OS = fields.Nested(_OSSchema, load_default=None, allow_none=True)
    ImageID = fields.String(load_default=None, allow_none=True)
    RepoDigests = fields.List(fields.String(), load_default=list, allow_none=True)


class _TrivySchema(_Schema):
    Version = fields.String(load_default=None, allow_none=True)


class _VulnerabilitySchema(_Schema):
    VulnerabilityID = fields.String(required=True)
    PkgName = fields.String(required=True)
    PkgPath = fields.String(load_default="", allow_none=True)
    InstalledVersion = fields.String(load_default="", allow_none=True)
    FixedVersion = fields.String(load_default="", allow_none=True)
    Status = fields.String(load_default=None, allow_none=True)
    Severity = fields.String(required=True, validate=_check_severity)
    Title = fields.String(load_default="", allow_none=True)
    PrimaryURL = fields.String(load_default="", allow_none=True)
    CVSS = fields.Dict(keys=fields.String(), load_default=dict, allow_none=True)
    PublishedDate = fields.String(load_default=None, allow_none=True)
    LastModifiedDate = fields.String(load_default=None, allow_none=True)


class _ResultSchema(_Schema):
    Target = fields.String(required=True)
    Class = fields.String(load_default=None, allow_none=True)
    Type = fields.String(load_default=None, allow_none=True)
    Vulnerabilities = fields.List(
        fields.Nested(_VulnerabilitySchema), load_default=list, allow_none=True
    )


class _ReportSchema(_Schema):
    SchemaVersion = fields.Integer(required=True, strict=True)
    ArtifactName = fields.String(load_default="", allow_none=True)
    ArtifactType = fields.String(load_default="", allow_none=True)
    CreatedAt = fields.String(load_default=None, allow_none=True)
    Trivy = fields.Nested(_TrivySchema, load_default=None, allow_none=True)
    Metadata = fields.Nested(_MetadataSchema, load_default=None, allow_none=True)
    Results = fields.List(fields.Nested(_ResultSchema), load_default=list, allow_none=True)


_REPORT_SCHEMA = _ReportSchema()


# The schemas' fields and types as msgspec structs, so that its C decoder checks what they
# check (validators aside: Severity's is run by _severities_known) and _build reads what it
# decoded (no dicts: ~1.5 ms less a 1 MB report). Absent or null is None; gc=False: no cycle.
_TYPES = {fields.String: str, fields.Integer: int, fields.Dict: dict[str, Any]}


def _typed(schema: marshmallow.Schema) -> Any:
    def kind(field: fields.Field[Any]) -> Any:
        if isinstance(field, fields.Nested):
            return _typed(field.schema)
        if isinstance(field, fields.List):
            return list[kind(field.inner)]  # type: ignore[misc]
        return _TYPES[type(field)]  # a new kind of field has to be added to _TYPES

    specs = []
    for name, field in schema.fields.items():
        what = kind(field) | None if field.allow_none else kind(field)
        specs.append((name, what) if field.required else (name, what, None))
    name = "_Typed" + type(schema).__name__.strip("_").removesuffix("Schema")
    return msgspec.defstruct(name, specs, kw_only=True, gc=False)


_TypedReport = _typed(_REPORT_SCHEMA)


def _severities_known(report: Any) -> bool:
    """What msgspec cannot check for ``_check_severity`` in a ``_TypedReport``, once a value."""
    results = report.Results or ()
    severities = {v.Severity for r in results for v in r.Vulnerabilities or ()}
    return all(_known_severity(severity) for severity in severities)


# The same schema with each Vulnerabilities list passed through as it is, for the entries
# (often hundreds) to be checked by msgspec; the full schema runs only to word the refusal.
class _ResultShellSchema(_ResultSchema):
    Vulnerabilities = fields.Raw(load_default=list, allow_none=True)  # type: ignore[assignment]


class _ReportShellSchema(_ReportSchema):
    Results = fields.List(fields.Nested(_ResultShellSchema), load_default=list, allow_none=True)


_REPORT_SHELL_SCHEMA = _ReportShellSchema()


def _load(document: dict[str, Any]) -> Any:
    """``_REPORT_SCHEMA.load(document)`` as ``_TypedReport`` structs, the entries checked
    quickly (as ``_decode_typed`` checks them). Raises ``marshmallow.ValidationError``."""
    loaded = _REPORT_SHELL_SCHEMA.load(document)
    try:
        report = msgspec.convert(loaded, _TypedReport)
        if _severities_known(report):
            return report
    except msgspec.ValidationError:
        pass
    full = _REPORT_SCHEMA.load(document)  # raises, naming the field
    return msgspec.convert(full, _TypedReport)


# ----------------------------------------------------------------------- parsing


def parse(data: str | bytes, *, source: str = "report") -> Report:
    """Parse Trivy ``--format json`` output (schema version 2) into a ``Report``.

    Tolerates a UTF-8 byte-order mark, CRLF line endings, unknown fields and a
    missing ``Vulnerabilities`` list. Raises ``InvalidReport`` (a one-line
    message naming ``source``) for the legacy top-level-list format, another
    schema version, truncated or non-JSON text, and missing required fields.
    """
    wire = _decode_typed(data) if isinstance(data, bytes) else None
    return _build(_checked(data, source) if wire is None else wire, source)


def _checked(data: str | bytes, source: str) -> Any:
    """The report in ``data`` as ``_TypedReport`` structs once the schemas passed it, the
    way for text and for whatever ``_decode_typed`` does not take: it words each refusal."""
    document = _loads_bytes(data) if isinstance(data, bytes) else _REFUSED
    if document is _REFUSED:
        text = _decode(data, source)
        stripped = text.strip()
        if not stripped:
            raise InvalidReport(f"{source}: empty output, expected Trivy JSON")
        try:
            document = _loads(stripped)
        except json.JSONDecodeError as e:
            truncated = e.pos >= len(stripped) - 1 or "Unterminated" in e.msg
            what = "truncated JSON" if truncated and stripped[0] in "{[" else "not JSON"
            raise InvalidReport(
                f"{source}: {what} ({e.msg} at character {e.pos} of {len(stripped)}); "
                f"output starts with {_preview(stripped)}"
            ) from None
    if isinstance(document, list):
        raise InvalidReport(
            f"{source}: legacy Trivy JSON (a top-level list of results, written by Trivy "
            "before 0.20) is not supported; rescan with a current Trivy, which writes "
            "SchemaVersion 2"
        )
    if not isinstance(document, dict):
        raise InvalidReport(
            f"{source}: expected a JSON object with SchemaVersion 2; "
            f"output starts with {_preview(stripped)}"
        )
    version = document.get("SchemaVersion")
    if version != 2:
        raise InvalidReport(
            f"{source}: SchemaVersion {version!r} is not supported; expected 2 "
            "(trivy --format json from Trivy 0.20 or later)"
        )
    try:
        return _load(document)
    except marshmallow.ValidationError as e:
        raise InvalidReport(f"{source}: not a valid Trivy report: {_first_error(e)}") from None


def _loads(text: str) -> Any:
    """``json.loads(text)``, in half the time for the valid reports of the hot path.

    orjson decodes a 1 MB report in ~1.3 ms where the standard library takes ~2.5 ms
    (a third of a collect's CPU). Whatever orjson refuses goes to ``json.loads``, so
    that what is accepted (NaN, huge integers) and every error message stay the
    standard library's; what orjson accepts, it decodes to the same values.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


_REFUSED = object()  # what _loads_bytes returns for bytes orjson does not take as they are
_UTF8_BOM = b"\xef\xbb\xbf"


# The fields of a report that ``_build`` reads, for msgspec: it decodes only these and skips
# the rest without building it (a report, with --list-all-pkgs, is mostly Packages,
# Descriptions and References we do not keep). ``_TypedReport``'s fields, but absent left
# absent (UNSET) and any value kept as it is (Any), so that the schemas word each refusal.
def _wire(name: str, schema: marshmallow.Schema, nested: dict[str, Any] | None = None) -> Any:
    types = nested or {}
    return msgspec.defstruct(
        name, [(field, types.get(field, Any), msgspec.UNSET) for field in schema.fields]
    )


def _listed(struct: Any) -> Any:
    return list[struct] | msgspec.UnsetType | None


_WireReport = _wire("_WireReport", _REPORT_SCHEMA, {
    "Metadata": _wire("_WireMetadata", _MetadataSchema()) | msgspec.UnsetType | None,
    "Results": _listed(_wire("_WireResult", _ResultSchema(), {
        "Vulnerabilities": _listed(_wire("_WireVulnerability", _VulnerabilitySchema())),
    })),
})  # fmt: skip
_WIRE_DECODER = msgspec.json.Decoder(_WireReport)
_TYPED_DECODER = msgspec.json.Decoder(_TypedReport)


def _loads_bytes(data: bytes) -> Any:
    """The JSON object in UTF-8 ``data`` (a byte-order mark skipped) as a dict of the fields
    a ``Report`` is built from, or ``_REFUSED``: then ``_checked`` takes its text way. What
    msgspec does not take (not an object, Results not a list of objects...) is decoded whole
    by orjson (~3.5 ms a 1 MB report, msgspec ~1), so that the schemas word the refusal."""
    body = data.removeprefix(_UTF8_BOM)
    try:
        document = msgspec.to_builtins(_WIRE_DECODER.decode(body))
    except (msgspec.DecodeError, msgspec.ValidationError):
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _REFUSED
    return document if isinstance(document, dict) else _REFUSED


def _decode_typed(data: bytes) -> Any:
    """The report in UTF-8 ``data`` as ``_TypedReport`` structs, or None for what the
    schemas would refuse (or msgspec, which reads no NaN): ``_checked`` then words it."""
    body = memoryview(data)[len(_UTF8_BOM) :] if data.startswith(_UTF8_BOM) else data
    try:
        report = _TYPED_DECODER.decode(body)  # a 1 MB report, no copy with its byte-order mark
    except msgspec.DecodeError:  # ValidationError included
        return None
    return report if report.SchemaVersion == 2 and _severities_known(report) else None


def parse_file(path: str | Path) -> Report:
    """Read and parse the report at ``path``; ``InvalidReport`` also for an unreadable file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InvalidReport(f"{path}: cannot read report: {e.strerror or e}") from None
    return parse(data, source=str(path))


def _decode(data: str | bytes, source: str) -> str:
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InvalidReport(
            f"{source}: not UTF-8 text (byte {e.start}); output starts with "
            f"{_preview(data[:_PREVIEW].decode('utf-8', 'replace'))}"
        ) from None


def _preview(text: str) -> str:
    head = text[:_PREVIEW]
    return repr(head) + ("..." if len(text) > _PREVIEW else "")


def _first_error(error: marshmallow.ValidationError) -> str:
    def walk(node: Any, path: list[str]) -> tuple[list[str], str]:
        if isinstance(node, dict):
            key = sorted(node, key=str)[0]
            return walk(node[key], [*path, str(key)])
        if isinstance(node, list):
            return path, str(node[0])
        return path, str(node)

    path, message = walk(error.messages, [])
    return f"{'.'.join(path) or 'document'}: {message}"


def _build(doc: Any, source: str) -> Report:
    """The ``Report`` of a ``_TypedReport``; ``InvalidReport`` for a time that is not RFC 3339."""
    metadata = doc.Metadata
    os_info = metadata and metadata.OS  # None, or a struct (always true)
    advisories: dict[tuple[Any, ...], Vulnerability] = {}
    results = []
    for raw in doc.Results or ():
        findings = tuple(
            _finding(v, raw, advisories, source)
            for v in raw.Vulnerabilities or ()  # absent, null or empty: none
        )
        results.append(Result(raw.Target, raw.Class, raw.Type, findings))
    return Report(
        artifact=doc.ArtifactName or "",
        artifact_type=doc.ArtifactType or "",
        created_at=_time(doc.CreatedAt, "CreatedAt", source),
        scanner_version=doc.Trivy and doc.Trivy.Version,
        os_family=os_info and os_info.Family,
        os_name=os_info and os_info.Name,
        image_id=metadata and metadata.ImageID,
        repo_digests=tuple((metadata and metadata.RepoDigests) or ()),
        results=tuple(results),
    )


# A report has a few hundred findings: their frozen dataclasses are built without __init__,
# which sets each field through object.__setattr__ (~1.8 us an object, ~0.6 us this way; a
# dict given to update, ~0.4 us less than keywords). Every field is given, in order
# (tests/unit/test_reports_fast_path.py checks against __init__'s).
_new = object.__new__


def _finding(
    raw: Any, result: Any, advisories: dict[tuple[Any, ...], Vulnerability], source: str
) -> Finding:
    finding = _new(Finding)
    finding.__dict__.update({
        "vulnerability": _vulnerability(raw, advisories, source),
        "package": raw.PkgName,
        "installed_version": raw.InstalledVersion or "",
        "fixed_version": raw.FixedVersion or "",
        "status": raw.Status,
        "target": result.Target,
        "result_class": result.Class,
        "result_type": result.Type,
        "package_path": raw.PkgPath or "",
    })  # fmt: skip
    return finding


def _vulnerability(
    raw: Any, advisories: dict[tuple[Any, ...], Vulnerability], source: str
) -> Vulnerability:
    """The advisory of entry ``raw``: the one built for an earlier entry of the report when
    every field it is built from is equal in both (an advisory in several packages), else a
    new one (Trivy could word one advisory two ways; each finding then keeps its own).
    Equal is ``==``: a CVSS score 7 and one 7.0 are one, the earlier's, with the same
    ``cvss_score``; a NaN is never equal, so its entries are each built."""
    cvss = raw.CVSS or {}
    key = (raw.VulnerabilityID, raw.Severity, raw.Title, raw.PrimaryURL, raw.PublishedDate,
           raw.LastModifiedDate)  # fmt: skip
    known = advisories.get(key)
    if known is not None and known.cvss == cvss:
        return known
    vulnerability = _new(Vulnerability)
    vulnerability.__dict__.update({
        "id": key[0],
        "severity": key[1].upper(),
        "title": key[2] or "",
        "url": key[3] or "",
        "cvss_score": _cvss_score(cvss),
        "cvss": cvss,
        "published_at": _time(key[4], "PublishedDate", source),
        "modified_at": _time(key[5], "LastModifiedDate", source),
    })  # fmt: skip
    advisories.setdefault(key, vulnerability)
    return vulnerability


def _cvss_score(cvss: Mapping[str, Any]) -> float | None:
    """NVD's V3 score if it has one, else the highest V3 score of any source, else the
    highest V2 score (one pass: this runs for every finding of every report)."""
    best_v3: float | None = None
    best_v2: float | None = None
    for source, entry in cvss.items():
        if not isinstance(entry, dict):
            continue
        v3 = entry.get("V3Score")
        if isinstance(v3, int | float):
            if source == "nvd":
                return float(v3)
            if best_v3 is None or v3 > best_v3:
                best_v3 = v3
        v2 = entry.get("V2Score")
        if isinstance(v2, int | float) and (best_v2 is None or v2 > best_v2):
            best_v2 = v2
    if best_v3 is not None:
        return float(best_v3)
    return None if best_v2 is None else float(best_v2)


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _time(text: str | None, name: str, source: str) -> datetime | None:
    """Trivy writes RFC 3339 with up to nanoseconds; Python keeps microseconds."""
    if not text:
        return None
    try:
        return _rfc3339(text)
    except ValueError:
        raise InvalidReport(f"{source}: {name} {text[:40]!r} is not an RFC 3339 time") from None


@functools.lru_cache(maxsize=8192)
def _rfc3339(text: str) -> datetime:
    """Two times per finding, mostly the same ones (an advisory's dates, in every report
    that has it): each distinct text is parsed once. Raises ValueError (not cached)."""
    return datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00")))
