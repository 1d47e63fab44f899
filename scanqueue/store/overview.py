"""The queries behind the vulnerability metrics and the HTML report: the farm at a glance.

``vulnerability_counts`` / ``image_states`` / ``oldest_scans`` feed the
Prometheus exporter (``scanqueue.vulnmetrics``); ``overview`` feeds
``scanqueue report --format html``. They read the views of migration 0003, so
a dashboard, the HTML report, ``scanqueue report`` and psql agree: a finding
counts once per workload (even when two containers run the same image), the
same distinct set ``scanqueue report --by workload`` counts.

It must never write and never return anything a credential could hide in
beyond what the views already hold (names, image references, reasons).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg

from scanqueue.store import db, reports

# One row per (cluster, namespace, workload kind, workload, severity, fixable): the
# label set of scanqueue_workload_vulnerabilities. Distinct as in severity_summary.
_VULNERABILITY_COUNTS = """
WITH f AS (
    SELECT DISTINCT cluster, namespace, workload_kind, workload, digest, vulnerability_id,
           package, installed_version, target, severity, fixable
      FROM current_findings)
SELECT cluster, namespace, workload_kind, workload, severity, fixable, count(*)
  FROM f
 GROUP BY cluster, namespace, workload_kind, workload, severity, fixable
 ORDER BY cluster, namespace, workload_kind, workload, severity, fixable"""

# Each running image of a cluster (by digest, or by reference while the digest is not
# known) in exactly one state: failing (its last scan attempt ended failed, timed out or
# refused), scanned (it has a successful scan), unscanned (never scanned, in progress,
# digest not known yet).
_IMAGE_STATES = """
WITH running AS (
    SELECT DISTINCT cluster, coalesce(digest, image) AS key, digest FROM workload_images),
last_attempt AS (
    SELECT DISTINCT ON (s.digest) s.digest, s.status
      FROM scans s
     WHERE s.digest IN (SELECT digest FROM running WHERE digest IS NOT NULL)
     ORDER BY s.digest, coalesce(s.finished_at, s.started_at) DESC, s.id DESC)
SELECT r.cluster,
       CASE WHEN la.status IN ('failed', 'timeout', 'refused') THEN 'failing'
            WHEN ls.digest IS NOT NULL THEN 'scanned'
            ELSE 'unscanned' END AS state,
       count(*)
  FROM running r
  LEFT JOIN last_attempt la ON la.digest = r.digest
  LEFT JOIN latest_scans ls ON ls.digest = r.digest
 GROUP BY 1, 2
 ORDER BY 1, 2"""

# The oldest "latest successful scan" among the digests running in each cluster.
_OLDEST_SCANS = """
SELECT wi.cluster, min(ls.scanned_at)
  FROM (SELECT DISTINCT cluster, digest FROM workload_images WHERE digest IS NOT NULL) wi
  JOIN latest_scans ls ON ls.digest = wi.digest
 GROUP BY wi.cluster
 ORDER BY wi.cluster"""


@contextmanager
def _read_snapshot(conn: db.Connection) -> Iterator[None]:
    """One read-only repeatable-read transaction (a savepoint inside a caller's transaction)."""
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction():
        if idle:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


@dataclasses.dataclass(frozen=True)
class VulnerabilityCount:
    cluster: str
    namespace: str
    workload_kind: str
    workload: str
    severity: str
    fixable: bool
    count: int


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What the exporter serves, read in one repeatable-read transaction."""

    vulnerabilities: tuple[VulnerabilityCount, ...]
    image_states: tuple[tuple[str, str, int], ...]  # (cluster, state, images)
    oldest_scans: tuple[tuple[str, datetime], ...]  # (cluster, scanned_at)


@db.translated
def snapshot(conn: db.Connection) -> Snapshot:
    """The three metric queries, consistent with each other (one snapshot of the database)."""
    with _read_snapshot(conn):
        vulns = tuple(
            VulnerabilityCount(r[0], r[1], r[2], r[3], r[4], bool(r[5]), int(r[6]))
            for r in conn.execute(_VULNERABILITY_COUNTS)
        )
        states = tuple((r[0], r[1], int(r[2])) for r in conn.execute(_IMAGE_STATES))
        oldest = tuple((r[0], r[1]) for r in conn.execute(_OLDEST_SCANS))
    return Snapshot(vulns, states, oldest)


# ------------------------------------------------------------------ the HTML report

ROW_LIMIT = 500  # rows of each detail table of the HTML report; the rest is counted

_FIXABLE = """
SELECT cluster, namespace, workload, vulnerability_id, severity, package, installed_version,
       fixed_version, title
  FROM (SELECT DISTINCT cluster, namespace, workload_kind || '/' || workload AS workload,
               vulnerability_id, severity, package, installed_version, fixed_version, title
          FROM fixable_findings) f
 ORDER BY severity_rank(severity) DESC, cluster, namespace, workload, vulnerability_id, package,
          installed_version, fixed_version"""

_CHANGES = """
SELECT change, registry || '/' || repository AS repository, vulnerability_id, severity,
       package, installed_version, fixed_version, scanned_at, previous_scanned_at
  FROM finding_changes
 ORDER BY change, severity_rank(severity) DESC, repository, vulnerability_id, package"""

_UNSCANNED = """
SELECT cluster, namespace, workload_kind || '/' || workload AS workload, container, image,
       reason, last_success
  FROM unscanned_images
 ORDER BY cluster, namespace, workload, container"""


@dataclasses.dataclass(frozen=True)
class Section:
    """One detail table: columns, at most ``ROW_LIMIT`` rows, and how many rows there are."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    total: int


@dataclasses.dataclass(frozen=True)
class Overview:
    """Everything the HTML report shows; ``workloads`` is ``scanqueue report --by workload``."""

    generated_at: datetime
    workloads: reports.ReportTable
    fixable: Section
    changes: Section
    unscanned: Section


def _section(conn: db.Connection, query: str) -> Section:
    with conn.cursor() as cur:
        cur.execute(query.encode())
        columns = tuple(d.name for d in cur.description or ())
        rows = cur.fetchall()
    return Section(columns, tuple(tuple(r) for r in rows[:ROW_LIMIT]), len(rows))


@db.translated
def overview(conn: db.Connection, *, now: datetime) -> Overview:
    """Workloads ranked, fixable criticals and highs, changes, unscanned images: one snapshot."""
    with _read_snapshot(conn):
        workloads = reports.report(conn, by="workload")
        return Overview(
            generated_at=now,
            workloads=workloads,
            fixable=_section(conn, _FIXABLE),
            changes=_section(conn, _CHANGES),
            unscanned=_section(conn, _UNSCANNED),
        )
