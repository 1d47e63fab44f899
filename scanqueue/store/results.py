"""Scan results: a Trivy report stored as its vulnerabilities and findings (the ingest).

``finish_scan`` turns a parsed report into rows and marks the scan succeeded,
in one transaction; ``import_report`` does the same for a report produced
elsewhere. This is the hot path of a burst (one report per finished Job), so
its cost per report is measured by ``make bench`` (``bench/ingest.py``).

A report is stored by one SQL statement, in one round trip: the scan row
locked, its image's OS recorded, the report's advisories upserted once each
(those this worker stored already, unchanged, left out: ``_StoredAdvisories``),
its findings inserted as one set, the scan marked succeeded. Each column
travels as one text parameter that the server splits (``string_to_array``):
psycopg's adaptation of Python lists costs ~5 ms of CPU per report, and COPY
needs its own round trips. Findings have no foreign keys (migration 0004):
their integrity is checked once per statement, not twice per row.

It must never leave a scan half-written (the findings, the advisories and the
scan's status commit together or not at all), never rewrite a succeeded scan's
findings (a re-delivered result changes nothing), and never let an older
advisory text overwrite a newer one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import orjson
import psycopg
from psycopg.types.json import Jsonb

from scanqueue import errors, images, reports
from scanqueue.store import alerts, db, scans

FindingsVia = Literal["set", "insert"]


@db.translated
def finish_scan(
    conn: db.Connection,
    *,
    scan_id: str,
    report: reports.Report,
    finished_at: datetime,
    findings_via: FindingsVia = "set",
) -> float | None:
    """Store ``report`` as the result of scan ``scan_id`` and mark it succeeded, in one transaction.

    Everything is one statement (``findings_via="insert"`` is the benchmark's
    row-by-row baseline: one INSERT per finding). Idempotent: a scan already
    succeeded is left as it is. Returns the scan's seconds from start to
    ``finished_at`` (for the duration metric, without reading the row again), or
    None when the scan had succeeded already or the row-by-row way stored it.
    Raises ``ScanNotRecorded`` for an unknown scan id (call ``start_scan`` first),
    ``PermanentError`` for a scan started without a digest.
    """
    # Whatever else a success writes goes in both ways below: a CTE of _INGEST reading
    # ``go``, and a statement in _finish_row_by_row's transaction.
    if findings_via != "set":  # the baseline
        _finish_row_by_row(conn, scan_id, report, finished_at)
        return None
    advisories = _STORED.unknown(conn, report.vulnerabilities)
    params = _statement_params(scan_id, report, finished_at, advisories)
    if params is None:  # a value the text columns cannot carry
        _finish_row_by_row(conn, scan_id, report, finished_at)
        return None
    try:
        row = db.execute_alone(conn, _INGEST, params)
    except psycopg.errors.ForeignKeyViolation:
        if len(advisories) == len(report.vulnerabilities):
            raise
        # an advisory remembered as stored is not (deleted by hand, a database restored):
        # forget them all and send every advisory of the report
        _STORED.forget(conn)
        advisories = report.vulnerabilities
        params = _statement_params(scan_id, report, finished_at, advisories)
        assert params is not None  # the same values, more of them: carried as before
        row = db.execute_alone(conn, _INGEST, params)
    if row is None:
        raise scans.ScanNotRecorded(
            f"scan {scan_id} is not recorded; call store.start_scan before finish_scan"
        )
    if row[1] is None:
        raise errors.PermanentError(
            f"scan {scan_id} has no image digest; start it again with the digest scanned"
        )
    if row[2] is None:  # succeeded already: this statement wrote nothing
        return None
    _STORED.remember(conn, advisories)
    return float(row[2])


class _StoredAdvisories:
    """The advisories this process stored (or found stored as they are), per database.

    Most advisories of a report are in the database already, unchanged (an advisory is in
    many images); comparing each one with its row is a fifth of the ingest's server CPU.
    An advisory equal to the one remembered is left out of the statement: the row holds
    it, or a newer text another report stored (which this one must not overwrite anyway).
    Should a remembered advisory be gone (deleted by hand, the database restored), the
    findings' check refuses the statement and ``finish_scan`` sends them all again.
    (Where neither text has a modification time, the row keeps the last one stored by any
    worker, as it did: only which report was last may differ.)
    """

    LIMIT = 50_000  # advisories per database; past it, start over (a few MB at most)

    def __init__(self) -> None:
        self._by_database: dict[tuple[Any, ...], dict[str, reports.Vulnerability]] = {}

    @staticmethod
    def _database(conn: db.Connection) -> tuple[Any, ...]:
        pg = conn.pgconn
        return (pg.host, pg.port, pg.db)

    def unknown(
        self, conn: db.Connection, advisories: Sequence[reports.Vulnerability]
    ) -> Sequence[reports.Vulnerability]:
        known = self._by_database.get(self._database(conn))
        if not known:
            return advisories
        # == compares every field but cvss (kept out of the dataclass's equality)
        return [
            v for v in advisories
            if (k := known.get(v.id)) is None or k != v or k.cvss != v.cvss
        ]  # fmt: skip

    def remember(self, conn: db.Connection, advisories: Sequence[reports.Vulnerability]) -> None:
        known = self._by_database.setdefault(self._database(conn), {})
        if len(known) + len(advisories) > self.LIMIT:
            known.clear()
        for v in advisories:
            known[v.id] = v

    def forget(self, conn: db.Connection) -> None:
        self._by_database.pop(self._database(conn), None)


_STORED = _StoredAdvisories()


@db.translated
def import_report(
    conn: db.Connection,
    *,
    cluster: str,
    image: str,
    report: reports.Report,
    at: datetime,
) -> str:
    """Store a report produced elsewhere (a CI pipeline's Trivy) as a scan of ``image``.

    ``image`` must be pinned by digest (``REF@sha256:...``). The scan id derives
    from cluster, digest and the report's creation time, so importing the same
    report again changes nothing. ``at`` is used when the report has no
    ``CreatedAt``. Returns the scan id; raises ``PermanentError`` for an
    unpinned or invalid reference.
    """
    reference = images.parse(image)
    if reference.digest is None:
        raise errors.PermanentError(
            f"image {image!r} is not pinned by digest; pass REPOSITORY@sha256:<hex>"
        )
    when = report.created_at or at
    fingerprint = "\n".join(
        [cluster, reference.digest, when.isoformat(), report.artifact, str(len(report.findings))]
    )
    scan_id = "import-" + hashlib.sha256(fingerprint.encode()).hexdigest()[:24]
    with conn.transaction():
        scans.start_scan(
            conn,
            scan_id=scan_id,
            cluster=cluster,
            digest=reference.digest,
            image=str(reference),
            mode="import",
            attempt=1,
            credential_source=None,
            started_at=when,
        )
        finish_scan(conn, scan_id=scan_id, report=report, finished_at=when)
    return scan_id


# ------------------------------------------------------------------ one statement per report

# Values are joined with the ASCII unit separator; NULL is the record separator alone.
# A report with either character in a value goes the row-by-row way instead.
_SEPARATOR, _NULL = "\x1f", "\x1e"


def _split(name: str, sql_type: str = "text") -> str:
    """SQL for the array that text parameter ``name`` carries (migration 0004's ingest_column)."""
    count = "n_advisories" if name.startswith("advisory_") else "n_findings"
    return f"ingest_column(%({name})s, %({count})s)::{sql_type}[]"


def _joined(values: Sequence[str | None]) -> str | None:
    """``values`` as one text parameter for ``_split``, or ``None`` if a value holds a separator."""
    nulls = values.count(None)
    texts = [_NULL if v is None else v for v in values] if nulls else cast(Sequence[str], values)
    text = _SEPARATOR.join(texts)
    if text.count(_SEPARATOR) != max(len(values) - 1, 0) or text.count(_NULL) != nulls:
        return None
    return text + _SEPARATOR


# Every write below is gated by ``go``: the scan exists, has a digest and is not succeeded
# yet. Its row is locked first (FOR UPDATE), so a concurrent delivery of the same result
# waits, then finds it succeeded and writes nothing. A scan being finished has no findings
# yet: they are written only here, together with the status that ends the scan.
# Anything else a success must write in the same transaction (an outbox row...) is one more
# CTE reading ``go``: the ingest stays one statement and one round trip.
# (Built from constants only: every value is a parameter.)
_INGEST = f"""
WITH scan AS (
    SELECT id, status, digest, started_at FROM scans WHERE id = %(scan_id)s FOR UPDATE
), go AS (
    SELECT id, digest FROM scan WHERE status <> 'succeeded' AND digest IS NOT NULL
), image AS (
    UPDATE images i SET os_family = %(os_family)s, os_name = %(os_name)s
      FROM go WHERE i.digest = go.digest
), reported AS (
    SELECT r.id, r.title, r.severity, r.url, r.cvss_score, c.cvss, r.published_at,
           r.modified_at
      FROM go, unnest(
          {_split("advisory_id")}, {_split("advisory_title")}, {_split("advisory_severity")},
          {_split("advisory_url")}, {_split("advisory_cvss_score", "numeric")},
          {_split("advisory_published_at", "timestamptz")},
          {_split("advisory_modified_at", "timestamptz")}
      ) WITH ORDINALITY AS r(id, title, severity, url, cvss_score, published_at, modified_at, n)
      JOIN jsonb_array_elements(%(advisory_cvss)s::jsonb) WITH ORDINALITY AS c(cvss, n)
        ON c.n = r.n
), changed AS (
    -- most advisories of a report are stored and unchanged: leave those rows alone
    SELECT r.* FROM reported r LEFT JOIN vulnerabilities v ON v.id = r.id
     WHERE v.id IS NULL
        OR ((v.title, v.severity, v.url, v.cvss_score, v.cvss, v.published_at, v.modified_at)
            IS DISTINCT FROM
            (r.title, r.severity, r.url, r.cvss_score, r.cvss, r.published_at, r.modified_at)
            AND (v.modified_at IS NULL OR r.modified_at IS NULL
                 OR r.modified_at >= v.modified_at))
), advisories AS (
    INSERT INTO vulnerabilities AS v
           (id, title, severity, url, cvss_score, cvss, published_at, modified_at)
    SELECT id, title, severity, url, cvss_score, cvss, published_at, modified_at
      FROM changed
     ORDER BY id  -- one lock order for every report: concurrent ingests never deadlock
    ON CONFLICT (id) DO UPDATE SET
       title = EXCLUDED.title, severity = EXCLUDED.severity, url = EXCLUDED.url,
       cvss_score = EXCLUDED.cvss_score, cvss = EXCLUDED.cvss,
       published_at = EXCLUDED.published_at, modified_at = EXCLUDED.modified_at,
       updated_at = now()
    WHERE (v.title, v.severity, v.url, v.cvss_score, v.cvss, v.published_at, v.modified_at)
          IS DISTINCT FROM
          (EXCLUDED.title, EXCLUDED.severity, EXCLUDED.url, EXCLUDED.cvss_score,
           EXCLUDED.cvss, EXCLUDED.published_at, EXCLUDED.modified_at)
      AND (v.modified_at IS NULL OR EXCLUDED.modified_at IS NULL
           OR EXCLUDED.modified_at >= v.modified_at)
), stored AS (
    INSERT INTO findings (scan_id, ordinal, vulnerability_id, package, installed_version,
                          fixed_version, status, severity, target, class, type, package_path)
    SELECT go.id, f.n - 1, f.vulnerability_id, f.package, f.installed_version,
           f.fixed_version, f.status, f.severity, f.target, f.class, f.type, f.package_path
      FROM go, unnest(
          {_split("finding_vulnerability_id")}, {_split("finding_package")},
          {_split("finding_installed_version")}, {_split("finding_fixed_version")},
          {_split("finding_status")}, {_split("finding_severity")}, {_split("finding_target")},
          {_split("finding_class")}, {_split("finding_type")}, {_split("finding_package_path")}
      ) WITH ORDINALITY AS f(vulnerability_id, package, installed_version, fixed_version,
                             status, severity, target, class, type, package_path, n)
), succeeded AS (
    UPDATE scans s SET status = 'succeeded', finished_at = %(finished_at)s, error = NULL,
                       scanner_version = %(scanner_version)s, artifact = %(artifact)s
      FROM go WHERE s.id = go.id
), outbox AS (  -- alerts on new findings: planned later by the alerts task, never here
    INSERT INTO alert_outbox (scan_id) SELECT id FROM go ON CONFLICT (scan_id) DO NOTHING
)
SELECT status, digest,
       CASE WHEN status <> 'succeeded'
            THEN extract(epoch FROM %(finished_at)s::timestamptz - started_at) END
  FROM scan"""  # noqa: S608
# Sent without comments and runs of blanks: psycopg caches how it parses a query only up to
# 4096 characters (tests/unit/test_store_statements.py keeps it under).
_INGEST = re.sub(r"\s+", " ", re.sub(r"--[^\n]*", "", _INGEST)).strip()


def _statement_params(
    scan_id: str,
    report: reports.Report,
    finished_at: datetime,
    advisories: Sequence[reports.Vulnerability] | None = None,
) -> dict[str, Any] | None:
    """The parameters of ``_INGEST``, or ``None`` when a value holds a separator.

    ``advisories``: those of the report to upsert (default: all of them)."""
    if advisories is None:
        advisories = report.vulnerabilities
    findings = report.findings
    columns: dict[str, Sequence[str | None]] = {
        "advisory_id": [v.id for v in advisories],
        "advisory_title": [v.title for v in advisories],
        "advisory_severity": [v.severity for v in advisories],
        "advisory_url": [v.url for v in advisories],
        "advisory_cvss_score": [_number(v.cvss_score) for v in advisories],
        "advisory_published_at": _times([v.published_at for v in advisories]),
        "advisory_modified_at": _times([v.modified_at for v in advisories]),
        **_finding_columns(findings),
    }
    params: dict[str, Any] = {
        "scan_id": scan_id,
        "os_family": report.os_family,
        "os_name": report.os_name,
        "finished_at": finished_at,
        "scanner_version": report.scanner_version,
        "artifact": report.artifact,
        "n_advisories": len(advisories),
        "n_findings": len(findings),
        # one JSON array, not one document per advisory: one encoding, one parse
        "advisory_cvss": _json([_plain(v.cvss) for v in advisories]),
    }
    for name, values in columns.items():
        joined = _joined(values)
        if joined is None:
            return None
        params[name] = joined
    return params


def _finding_columns(findings: Sequence[reports.Finding]) -> dict[str, list[str | None]]:
    return {
        "finding_vulnerability_id": [f.vulnerability.id for f in findings],
        "finding_package": [f.package for f in findings],
        "finding_installed_version": [f.installed_version for f in findings],
        "finding_fixed_version": [f.fixed_version for f in findings],
        "finding_status": [f.status for f in findings],
        "finding_severity": [f.vulnerability.severity for f in findings],
        "finding_target": [f.target for f in findings],
        "finding_class": [f.result_class for f in findings],
        "finding_type": [f.result_type for f in findings],
        "finding_package_path": [f.package_path for f in findings],
    }


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return mapping if isinstance(mapping, dict) else dict(mapping)


# Options that send what orjson would write differently from json.dumps to the fallback:
# datetimes, dataclasses and subclasses of str, int, dict and list (json.dumps refuses some).
_ORJSON_AS_JSON = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _json(value: Any) -> str:
    """``json.dumps(value)``, or a text Postgres parses to the same JSON in a fifth of the time.

    orjson writes what JSON decoding gives (a report's CVSS) as json.dumps does but for
    spacing and escapes; what it would write otherwise goes to json.dumps: NaN and
    infinities (orjson writes null, json.dumps NaN, which Postgres refuses: the scan's
    ingest fails as it did), integers past 64 bits, keys that are not strings, lone
    surrogates, and the types ``_ORJSON_AS_JSON`` passes through. (An Enum or a UUID,
    which no decoded report holds, orjson writes where json.dumps raises TypeError.)
    """
    try:
        text = orjson.dumps(value, option=_ORJSON_AS_JSON)
    except orjson.JSONEncodeError:
        return json.dumps(value)
    if b"null" in text:  # maybe a NaN: rare in a report's CVSS, so never worth telling apart
        return json.dumps(value)
    return text.decode()


def _number(value: float | None) -> str | None:
    return None if value is None else repr(value)


def _times(values: Sequence[datetime | None]) -> list[str | None]:
    return [None if t is None else _isoformat(t, t.utcoffset()) for t in values]


@functools.lru_cache(maxsize=8192)
def _isoformat(value: datetime, offset: timedelta | None) -> str:
    """``value.isoformat()`` (~1.5 us for an aware time): an advisory's dates come back in
    every report that has it. The offset is part of the key because two times of one
    instant in different offsets are equal (one key) but are not written alike."""
    return value.isoformat()


# ------------------------------------------------------------------ the row-by-row baseline


def _finish_row_by_row(
    conn: db.Connection, scan_id: str, report: reports.Report, finished_at: datetime
) -> None:
    """``finish_scan`` with one INSERT per finding: the benchmark's baseline (and the way
    for the rare report with a separator character in a value)."""
    with conn.transaction():
        row = scans.lock_scan(conn, scan_id, then="finish_scan")
        if row[0] == "succeeded":
            return  # a re-delivered result: the first delivery is kept as it is
        if row[1] is None:
            raise errors.PermanentError(
                f"scan {scan_id} has no image digest; start it again with the digest scanned"
            )
        conn.execute(
            "UPDATE images SET os_family = %s, os_name = %s WHERE digest = %s",
            (report.os_family, report.os_name, row[1]),
        )
        _upsert_vulnerabilities(conn, report.vulnerabilities)
        with conn.cursor() as cur:
            for finding in _finding_rows(scan_id, report.findings):
                cur.execute(_INSERT_FINDING, finding)
        conn.execute(
            """UPDATE scans SET status = 'succeeded', finished_at = %s, error = NULL,
                                scanner_version = %s, artifact = %s
                WHERE id = %s""",
            (finished_at, report.scanner_version, report.artifact, scan_id),
        )
        alerts.enqueue(conn, scan_id)  # alerts on new findings: planned later, never here


def _upsert_vulnerabilities(
    conn: db.Connection, vulnerabilities: Sequence[reports.Vulnerability]
) -> None:
    if not vulnerabilities:
        return
    document = [
        {
            "id": v.id,
            "title": v.title,
            "severity": v.severity,
            "url": v.url,
            "cvss_score": v.cvss_score,
            "cvss": dict(v.cvss),
            "published_at": v.published_at.isoformat() if v.published_at else None,
            "modified_at": v.modified_at.isoformat() if v.modified_at else None,
        }
        for v in vulnerabilities
    ]
    conn.execute(
        """WITH r AS (
               SELECT * FROM jsonb_to_recordset(%s::jsonb) AS r(
                      id text, title text, severity text, url text, cvss_score numeric,
                      cvss jsonb, published_at timestamptz, modified_at timestamptz)),
           changed AS (
               SELECT r.* FROM r LEFT JOIN vulnerabilities v ON v.id = r.id
                WHERE v.id IS NULL
                   OR ((v.title, v.severity, v.url, v.cvss_score, v.cvss, v.published_at,
                        v.modified_at)
                       IS DISTINCT FROM
                       (r.title, r.severity, r.url, r.cvss_score, r.cvss, r.published_at,
                        r.modified_at)
                       AND (v.modified_at IS NULL OR r.modified_at IS NULL
                            OR r.modified_at >= v.modified_at)))
           INSERT INTO vulnerabilities AS v
                  (id, title, severity, url, cvss_score, cvss, published_at, modified_at)
           SELECT id, title, severity, url, cvss_score, cvss, published_at, modified_at
             FROM changed
            ORDER BY id
           ON CONFLICT (id) DO UPDATE SET
              title = EXCLUDED.title, severity = EXCLUDED.severity, url = EXCLUDED.url,
              cvss_score = EXCLUDED.cvss_score, cvss = EXCLUDED.cvss,
              published_at = EXCLUDED.published_at, modified_at = EXCLUDED.modified_at,
              updated_at = now()
           WHERE (v.title, v.severity, v.url, v.cvss_score, v.cvss, v.published_at,
                  v.modified_at)
                 IS DISTINCT FROM
                 (EXCLUDED.title, EXCLUDED.severity, EXCLUDED.url, EXCLUDED.cvss_score,
                  EXCLUDED.cvss, EXCLUDED.published_at, EXCLUDED.modified_at)
             AND (v.modified_at IS NULL OR EXCLUDED.modified_at IS NULL
                  OR EXCLUDED.modified_at >= v.modified_at)""",
        (Jsonb(document),),
    )


_INSERT_FINDING = """INSERT INTO findings (scan_id, ordinal, vulnerability_id, package,
    installed_version, fixed_version, status, severity, target, class, type, package_path)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"""


def _finding_rows(scan_id: str, findings: Sequence[reports.Finding]) -> Iterator[tuple[Any, ...]]:
    for ordinal, f in enumerate(findings):
        yield (
            scan_id,
            ordinal,
            f.vulnerability.id,
            f.package,
            f.installed_version,
            f.fixed_version,
            f.status,
            f.severity,
            f.target,
            f.result_class,
            f.result_type,
            f.package_path,
        )
