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
# label set of scanqueue_workload_vulnerabilities. The same numbers as severity_summary
# (each distinct finding of each digest a workload runs, once), but counted per digest
# first and then added up per workload: ten thousand containers running two hundred
# images cost two hundred scans' findings, not one row per container and finding.
_VULNERABILITY_COUNTS = """
WITH running AS (
    SELECT DISTINCT cl.name AS cluster, w.namespace, w.kind AS workload_kind,
           w.name AS workload, c.digest
      FROM containers c
      JOIN workloads w ON w.id = c.workload_id
      JOIN clusters cl ON cl.id = c.cluster_id
     WHERE c.gone_at IS NULL AND c.digest IS NOT NULL),
latest AS (
    SELECT DISTINCT ON (s.digest) s.digest, s.id AS scan_id
      FROM scans s
     WHERE s.status = 'succeeded' AND s.digest IN (SELECT digest FROM running)
     ORDER BY s.digest, s.finished_at DESC, s.id DESC),
per_digest AS (
    SELECT digest, severity, fixable, count(*) AS n
      FROM (SELECT DISTINCT l.digest, f.vulnerability_id, f.package, f.installed_version,
                   f.target, f.severity, f.fixed_version <> '' AS fixable
              FROM latest l JOIN findings f ON f.scan_id = l.scan_id) distinct_findings
     GROUP BY digest, severity, fixable)
SELECT r.cluster, r.namespace, r.workload_kind, r.workload, d.severity, d.fixable, sum(d.n)
  FROM running r JOIN per_digest d ON d.digest = r.digest
 GROUP BY r.cluster, r.namespace, r.workload_kind, r.workload, d.severity, d.fixable"""

# Each running image of a cluster (by digest, or by reference while the digest is not
# known) in exactly one state: failing (its last scan attempt ended failed, timed out or
# refused), scanned (it has a successful scan), unscanned (never scanned, in progress,
# digest not known yet). The workload_images view's rules, read from the tables directly.
_IMAGE_STATES = """
WITH running AS (
    SELECT DISTINCT c.cluster_id, coalesce(c.digest, c.image) AS key, c.digest
      FROM containers c WHERE c.gone_at IS NULL),
digests AS (SELECT DISTINCT digest FROM running WHERE digest IS NOT NULL),
last_attempt AS (
    SELECT DISTINCT ON (s.digest) s.digest, s.status
      FROM scans s JOIN digests d ON d.digest = s.digest
     ORDER BY s.digest, coalesce(s.finished_at, s.started_at) DESC, s.id DESC),
succeeded AS (
    SELECT DISTINCT s.digest FROM scans s JOIN digests d ON d.digest = s.digest
     WHERE s.status = 'succeeded')
SELECT cl.name,
       CASE WHEN la.status IN ('failed', 'timeout', 'refused') THEN 'failing'
            WHEN ok.digest IS NOT NULL THEN 'scanned'
            ELSE 'unscanned' END AS state,
       count(*)
  FROM running r
  JOIN clusters cl ON cl.id = r.cluster_id
  LEFT JOIN last_attempt la ON la.digest = r.digest
  LEFT JOIN succeeded ok ON ok.digest = r.digest
 GROUP BY 1, 2"""

# The oldest "latest successful scan" among the digests running in each cluster.
_OLDEST_SCANS = """
WITH running AS (
    SELECT DISTINCT c.cluster_id, c.digest FROM containers c
     WHERE c.gone_at IS NULL AND c.digest IS NOT NULL),
latest AS (
    SELECT s.digest, max(s.finished_at) AS at FROM scans s
     WHERE s.status = 'succeeded' AND s.digest IN (SELECT digest FROM running)
     GROUP BY s.digest)
SELECT cl.name, min(l.at)
  FROM running r
  JOIN latest l ON l.digest = r.digest
  JOIN clusters cl ON cl.id = r.cluster_id
 GROUP BY cl.name"""


@contextmanager
def _read_snapshot(conn: db.Connection) -> Iterator[None]:
    """One read-only repeatable-read transaction (a savepoint inside a caller's transaction)."""
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction():
        if idle:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


@dataclasses.dataclass(frozen=True, order=True)
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
    alert_deliveries: tuple[tuple[str, int], ...] = ()  # (state, deliveries)


@db.translated
def snapshot(conn: db.Connection) -> Snapshot:
    """The three metric queries, consistent with each other (one snapshot of the database)."""
    with _read_snapshot(conn):
        # sorted here, not in SQL: a locale-aware ORDER BY of every row costs more than
        # the query itself at ten thousand containers
        vulns = tuple(
            sorted(
                VulnerabilityCount(r[0], r[1], r[2], r[3], r[4], bool(r[5]), int(r[6]))
                for r in conn.execute(_VULNERABILITY_COUNTS)
            )
        )
        states = tuple(sorted((r[0], r[1], int(r[2])) for r in conn.execute(_IMAGE_STATES)))
        oldest = tuple(sorted((r[0], r[1]) for r in conn.execute(_OLDEST_SCANS)))
        deliveries = tuple(
            sorted(
                (str(r[0]), int(r[1]))
                for r in conn.execute("SELECT state, count(*) FROM alert_deliveries GROUP BY 1")
            )
        )
    return Snapshot(vulns, states, oldest, deliveries)


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
