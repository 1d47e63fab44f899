"""Scan results: a Trivy report stored as its vulnerabilities and findings (the ingest).

``finish_scan`` turns a parsed report into rows and marks the scan succeeded,
in one transaction; ``import_report`` does the same for a report produced
elsewhere. This is the hot path of a burst (one report per finished Job), so
its cost per report is measured by ``make bench`` (``bench/ingest.py``).

It must never leave a scan half-written (the findings, the advisories and the
scan's status commit together or not at all), never rewrite a succeeded scan's
findings (a re-delivered result changes nothing), and never let an older
advisory text overwrite a newer one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Literal

from psycopg.types.json import Jsonb

from scanqueue import errors, images, reports
from scanqueue.store import db, scans


@db.translated
def finish_scan(
    conn: db.Connection,
    *,
    scan_id: str,
    report: reports.Report,
    finished_at: datetime,
    findings_via: Literal["copy", "insert"] = "copy",
) -> None:
    """Store ``report`` as the result of scan ``scan_id`` and mark it succeeded, in one transaction.

    Vulnerabilities are upserted in one statement, findings written with COPY
    (``findings_via="insert"`` is the row-by-row baseline for the benchmark).
    Idempotent: a scan already succeeded is left as it is. Raises
    ``PermanentError`` for an unknown scan id (call ``start_scan`` first).
    """
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
        conn.execute("DELETE FROM findings WHERE scan_id = %s", (scan_id,))
        if findings_via == "copy":
            _copy_findings(conn, scan_id, report.findings)
        else:
            _insert_findings(conn, scan_id, report.findings)
        conn.execute(
            """UPDATE scans SET status = 'succeeded', finished_at = %s, error = NULL,
                                scanner_version = %s, artifact = %s
                WHERE id = %s""",
            (finished_at, report.scanner_version, report.artifact, scan_id),
        )


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
    # Most advisories of a report are stored already and unchanged: filter those out before
    # the upsert, which would otherwise lock (and so write) every one of their rows.
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
            ORDER BY id  -- one lock order for every report: concurrent ingests never deadlock
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


_COPY_FINDINGS = """COPY findings (scan_id, ordinal, vulnerability_id, package,
    installed_version, fixed_version, status, severity, target, class, type, package_path)
    FROM STDIN"""
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


def _copy_findings(conn: db.Connection, scan_id: str, findings: Sequence[reports.Finding]) -> None:
    with conn.cursor() as cur, cur.copy(_COPY_FINDINGS) as copy:
        for row in _finding_rows(scan_id, findings):
            copy.write_row(row)


def _insert_findings(
    conn: db.Connection, scan_id: str, findings: Sequence[reports.Finding]
) -> None:
    with conn.cursor() as cur:
        for row in _finding_rows(scan_id, findings):
            cur.execute(_INSERT_FINDING, row)
