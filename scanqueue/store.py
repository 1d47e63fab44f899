"""Postgres: migrations, writes and report queries. The only module that imports psycopg.

Migrations are plain numbered SQL files (``NNNN_name.sql``) in
``scanqueue/migrations``, applied in order, each in its own transaction, and
recorded in ``scanqueue_migrations``. An advisory lock serialises concurrent
``migrate`` calls (several workers starting at once). Rows written here never
hold a credential value: only where a credential came from.

Write functions take a connection (from ``connect`` or a ``pool``) and run as
one transaction each: they commit on return, or become a savepoint of the
caller's transaction when one is open. Writes are idempotent: a re-delivered
task calling the same function with the same arguments changes nothing.
Datetimes passed in must be timezone-aware.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import psycopg
import psycopg_pool
from psycopg.types.json import Jsonb

from scanqueue import errors, images, reports

Connection = psycopg.Connection[Any]
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _translated(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn psycopg's exceptions into ours, once, here: a lost connection, a deadlock or a
    serialisation failure is temporary (retry); data the database refuses is permanent."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return func(*args, **kwargs)
        except errors.ScanqueueError:
            raise
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as e:
            raise errors.TemporaryError(
                f"Postgres, in store.{func.__name__}: {type(e).__name__}: "
                + _no_password(" ".join(str(e).split()))
            ) from e
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as e:
            raise errors.PermanentError(
                f"Postgres refused store.{func.__name__}: {type(e).__name__}: "
                + " ".join(str(e).split())
            ) from e

    return wrapper


MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_ID = 0x5CA9_0E0E  # advisory lock key for migrations


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Return the migrations found in ``directory``, ordered by version.

    Raises ``PermanentError`` for a misnamed file or a version used twice.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if not match:
            raise errors.PermanentError(
                f"migration {path}: name must look like 0001_create_tables.sql"
            )
        version = int(match.group(1))
        if version in found:
            raise errors.PermanentError(
                f"migration version {version} is used by {found[version].path.name} and {path.name}"
            )
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


@contextmanager
def connect(url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """Open one connection to ``url``; translate connection failures to ``TemporaryError``."""
    try:
        conn = psycopg.connect(url, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise errors.TemporaryError(f"cannot connect to Postgres: {_no_password(str(e))}") from e
    try:
        yield conn
    finally:
        conn.close()


def migrate(
    conn: psycopg.Connection[tuple[object, ...]], *, directory: Path = MIGRATIONS_DIR
) -> list[Migration]:
    """Apply the migrations not yet recorded; return those applied now (empty when up to date)."""
    pending = migrations(directory)
    applied_now: list[Migration] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS scanqueue_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row[0] for row in conn.execute("SELECT version FROM scanqueue_migrations")}
        for migration in pending:
            if migration.version in done:
                continue
            sql = migration.path.read_text(encoding="utf-8")
            try:
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute(
                        "INSERT INTO scanqueue_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
            except psycopg.Error as e:
                raise errors.PermanentError(f"migration {migration.path.name} failed: {e}") from e
            applied_now.append(migration)
    return applied_now


def applied_versions(conn: psycopg.Connection[tuple[object, ...]]) -> list[int]:
    """Return the migration versions recorded in the database, ascending."""
    exists = conn.execute("SELECT to_regclass('scanqueue_migrations')").fetchone()
    if exists is None or exists[0] is None:
        return []
    rows = conn.execute("SELECT version FROM scanqueue_migrations ORDER BY 1").fetchall()
    return [int(str(row[0])) for row in rows]


def _no_password(message: str) -> str:
    """Drop a password that libpq may echo back from a connection string."""
    return re.sub(r"(password=)\S+", r"\1***", re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", message))


# ------------------------------------------------------------------ connections


class Pool(psycopg_pool.ConnectionPool[Any]):
    """A connection pool whose ``connection()`` raises ``TemporaryError`` when Postgres is gone.

    psycopg_pool raises its own ``PoolTimeout`` (no connection within the pool's
    timeout) and psycopg ``OperationalError`` (a connection lost at commit)
    outside any ``store`` function; callers such as the Celery tasks retry only
    ``TemporaryError``, so a Postgres restart would otherwise fail a scan task.
    """

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        try:
            with super().connection(timeout) as conn:
                yield conn
        except (psycopg_pool.PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError) as e:
            raise errors.TemporaryError(
                f"Postgres connection of pool {self.name}: {type(e).__name__}: "
                + _no_password(" ".join(str(e).split()))
                + "; is Postgres up? retried"
            ) from e


def pool(
    url: str, *, min_size: int = 1, max_size: int = 4, timeout: float = 15.0
) -> psycopg_pool.ConnectionPool[Any]:
    """Open a connection pool for this process (one per process; close it on shutdown).

    Use ``with p.connection() as conn:``; the block commits on success. Raises
    ``TemporaryError`` (without the password) when Postgres cannot be reached
    within ``timeout`` seconds.
    """
    p: psycopg_pool.ConnectionPool[Any] = Pool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"connect_timeout": 10},
        name="scanqueue",
        open=False,
    )
    try:
        p.open(wait=True, timeout=timeout)
    except psycopg_pool.PoolTimeout as e:
        p.close()
        raise errors.TemporaryError(
            f"cannot open a Postgres pool to {_no_password(url)} within {timeout:g}s; "
            "check database.url and that Postgres is running"
        ) from e
    return p


# -------------------------------------------------------------------- inventory


ContainerType = Literal["init", "app", "ephemeral"]


@dataclasses.dataclass(frozen=True)
class ContainerRow:
    """One container of one running pod, as the watcher saw it."""

    cluster: str
    namespace: str
    workload_kind: str  # "Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job", "Pod"
    workload_name: str
    pod: str
    container: str
    container_type: str  # "init" | "app" | "ephemeral"
    image: str  # as written in the pod spec
    digest: str | None  # "sha256:..." from the container status; None until known
    node: str | None
    seen_at: datetime


@_translated
def record_containers(conn: Connection, rows: Sequence[ContainerRow]) -> None:
    """Upsert the containers (and their clusters and workloads) in one transaction.

    First seen is kept, last seen moves forward, a container marked gone comes
    back when seen after it went. The latest sighting wins when ``rows`` holds
    one container twice.
    """
    latest: dict[tuple[str, str, str, str], ContainerRow] = {}
    for row in rows:
        key = (row.cluster, row.namespace, row.pod, row.container)
        if key not in latest or latest[key].seen_at <= row.seen_at:
            latest[key] = row
    by_cluster: dict[str, list[ContainerRow]] = {}
    for row in latest.values():
        by_cluster.setdefault(row.cluster, []).append(row)
    with conn.transaction():
        for cluster, group in by_cluster.items():
            _record_cluster_containers(conn, _cluster_id(conn, cluster), group)


def _record_cluster_containers(conn: Connection, cluster_id: int, rows: list[ContainerRow]) -> None:
    conn.execute(
        """INSERT INTO workloads (cluster_id, namespace, kind, name, first_seen, last_seen)
           SELECT %s, ns, kind, name, min(seen), max(seen)
             FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[])
                  AS r(ns, kind, name, seen)
            GROUP BY ns, kind, name
           ON CONFLICT (cluster_id, namespace, kind, name) DO UPDATE
              SET last_seen = greatest(workloads.last_seen, EXCLUDED.last_seen)""",
        (
            cluster_id,
            [r.namespace for r in rows],
            [r.workload_kind for r in rows],
            [r.workload_name for r in rows],
            [r.seen_at for r in rows],
        ),
    )
    conn.execute(
        """INSERT INTO containers AS c (cluster_id, namespace, pod, container, container_type,
                                        workload_id, image, digest, node, first_seen, last_seen)
           SELECT %(cluster)s, r.ns, r.pod, r.container, r.ctype, w.id, r.image, r.digest,
                  r.node, r.seen, r.seen
             FROM unnest(%(ns)s::text[], %(kind)s::text[], %(wname)s::text[], %(pod)s::text[],
                         %(container)s::text[], %(ctype)s::text[], %(image)s::text[],
                         %(digest)s::text[], %(node)s::text[], %(seen)s::timestamptz[])
                  AS r(ns, kind, wname, pod, container, ctype, image, digest, node, seen)
             JOIN workloads w ON w.cluster_id = %(cluster)s AND w.namespace = r.ns
                             AND w.kind = r.kind AND w.name = r.wname
           ON CONFLICT (cluster_id, namespace, pod, container) DO UPDATE SET
              container_type = EXCLUDED.container_type,
              workload_id = EXCLUDED.workload_id,
              image = EXCLUDED.image,
              digest = CASE WHEN EXCLUDED.digest IS NULL AND EXCLUDED.image = c.image
                            THEN c.digest ELSE EXCLUDED.digest END,
              node = coalesce(EXCLUDED.node, c.node),
              first_seen = CASE WHEN c.gone_at IS NULL THEN c.first_seen
                                ELSE EXCLUDED.first_seen END,
              last_seen = greatest(c.last_seen, EXCLUDED.last_seen),
              gone_at = NULL
            WHERE c.gone_at IS NULL OR EXCLUDED.last_seen > c.gone_at""",
        {
            "cluster": cluster_id,
            "ns": [r.namespace for r in rows],
            "kind": [r.workload_kind for r in rows],
            "wname": [r.workload_name for r in rows],
            "pod": [r.pod for r in rows],
            "container": [r.container for r in rows],
            "ctype": [r.container_type for r in rows],
            "image": [r.image for r in rows],
            "digest": [r.digest for r in rows],
            "node": [r.node for r in rows],
            "seen": [r.seen_at for r in rows],
        },
    )


@_translated
def forget_pods(
    conn: Connection, *, cluster: str, namespace: str, pods: Sequence[str], at: datetime
) -> None:
    """Mark the containers of these pods gone at ``at`` (pods deleted or no longer running).

    A container seen after ``at`` (a pod re-created under the same name) is left alone.
    """
    with conn.transaction():
        conn.execute(
            """UPDATE containers c SET gone_at = %s
                 FROM clusters cl
                WHERE cl.id = c.cluster_id AND cl.name = %s AND c.namespace = %s
                  AND c.pod = ANY(%s) AND c.gone_at IS NULL AND c.last_seen <= %s""",
            (at, cluster, namespace, list(pods), at),
        )


@_translated
def replace_cluster_inventory(
    conn: Connection, *, cluster: str, rows: Sequence[ContainerRow], at: datetime
) -> None:
    """After a full (re)list: record ``rows`` and mark every other container of the cluster gone.

    Containers last seen after ``at`` (by a watch event newer than the list) stay.
    """
    with conn.transaction():
        cluster_id = _cluster_id(conn, cluster)
        record_containers(conn, [r for r in rows if r.cluster == cluster])
        # The rows seen go into a temporary table with a primary key, so that marking
        # the rest gone is one index-backed anti-join (an unnest() in NOT EXISTS was
        # planned as a nested loop: 15 s for 10,000 containers).
        conn.execute(
            """CREATE TEMPORARY TABLE IF NOT EXISTS seen_containers (
                   namespace text, pod text, container text,
                   PRIMARY KEY (namespace, pod, container)) ON COMMIT DELETE ROWS"""
        )
        conn.execute(
            """INSERT INTO seen_containers
               SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) ON CONFLICT DO NOTHING""",
            (
                [r.namespace for r in rows],
                [r.pod for r in rows],
                [r.container for r in rows],
            ),
        )
        conn.execute("ANALYZE seen_containers")
        conn.execute(
            """UPDATE containers c SET gone_at = %s
                WHERE c.cluster_id = %s AND c.gone_at IS NULL AND c.last_seen < %s
                  AND NOT EXISTS (
                      SELECT 1 FROM seen_containers r
                       WHERE r.namespace = c.namespace AND r.pod = c.pod
                         AND r.container = c.container)""",
            (at, cluster_id, at),
        )


def _cluster_id(conn: Connection, name: str) -> int:
    for _ in range(3):  # a concurrent insert of the same name can hide the row once
        row = conn.execute(
            """WITH ins AS (INSERT INTO clusters (name) VALUES (%s)
                            ON CONFLICT (name) DO NOTHING RETURNING id)
               SELECT id FROM ins UNION ALL SELECT id FROM clusters WHERE name = %s""",
            (name, name),
        ).fetchone()
        if row is not None:
            return int(row[0])
    raise errors.TemporaryError(f"cluster {name!r}: could not insert or find its row; retry")


# ------------------------------------------------------------------------ scans

ScanStatus = Literal["pending", "running", "succeeded", "failed", "timeout", "refused"]
ScanMode = Literal["registry", "node", "anonymous", "import"]
FAILED_STATUSES = ("failed", "timeout", "refused")
_MAX_REASON = 2000  # characters of an error kept on a scan row


@dataclasses.dataclass(frozen=True)
class ScanRow:
    id: str
    cluster: str
    digest: str
    image: str
    status: str  # one of ScanStatus
    mode: str  # one of ScanMode
    attempt: int
    credential_source: str | None
    scanner_version: str | None
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    findings: int  # rows in findings for this scan


@_translated
def fresh_digests(conn: Connection, digests: Iterable[str], *, since: datetime) -> set[str]:
    """The digests among ``digests`` with a successful scan finished at or after ``since``."""
    wanted = sorted(set(digests))
    if not wanted:
        return set()
    rows = conn.execute(
        """SELECT DISTINCT digest FROM scans
            WHERE digest = ANY(%s) AND status = 'succeeded' AND finished_at >= %s""",
        (wanted, since),
    ).fetchall()
    return {str(r[0]) for r in rows}


@_translated
def start_scan(
    conn: Connection,
    *,
    scan_id: str,
    cluster: str,
    digest: str,
    image: str,
    mode: str,
    attempt: int,
    credential_source: str | None,
    started_at: datetime,
) -> None:
    """Record that scan ``scan_id`` of ``digest`` is running (its image row created if new).

    Idempotent: calling again with the same attempt changes nothing; a higher
    attempt (the next credential, a retry after a failure) restarts the row; a
    succeeded scan is never reopened. ``credential_source`` names where the
    credential came from ("team-a/regcred"), never its value. An empty
    ``digest`` (not known yet) is allowed so that the scan's failure can still
    be recorded; such a scan cannot succeed.
    """
    registry, repository = _split_image(image)
    with conn.transaction():
        cluster_id = _cluster_id(conn, cluster)
        if digest:
            _execute(
                conn,
                f"scan {scan_id}",
                """INSERT INTO images (digest, registry, repository) VALUES (%s, %s, %s)
                   ON CONFLICT (digest) DO NOTHING""",
                (digest, registry, repository),
            )
        _execute(
            conn,
            f"scan {scan_id}",
            """INSERT INTO scans AS s (id, digest, cluster_id, image, status, mode, attempt,
                                       credential_source, started_at)
               VALUES (%s, %s, %s, %s, 'running', %s, %s, %s, %s)
               ON CONFLICT (id) DO UPDATE SET
                  status = 'running', mode = EXCLUDED.mode, attempt = EXCLUDED.attempt,
                  credential_source = EXCLUDED.credential_source,
                  started_at = CASE WHEN EXCLUDED.attempt > s.attempt THEN EXCLUDED.started_at
                                    ELSE s.started_at END,
                  finished_at = NULL, error = NULL
               WHERE s.status <> 'succeeded'
                 AND (EXCLUDED.attempt > s.attempt
                      OR (EXCLUDED.attempt = s.attempt AND s.status IN ('pending', 'running')))""",
            (
                scan_id,
                digest or None,
                cluster_id,
                image,
                mode,
                attempt,
                credential_source,
                started_at,
            ),
        )


@_translated
def finish_scan(
    conn: Connection,
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
        row = _lock_scan(conn, scan_id, then="finish_scan")
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


def _lock_scan(conn: Connection, scan_id: str, *, then: str) -> tuple[Any, ...]:
    """(status, digest) of scan ``scan_id``, its row locked until the transaction ends.

    Raises ``PermanentError`` for an unknown scan id (``then`` names the caller).
    """
    row = conn.execute(
        "SELECT status, digest FROM scans WHERE id = %s FOR UPDATE", (scan_id,)
    ).fetchone()
    if row is None:
        raise errors.PermanentError(
            f"scan {scan_id} is not recorded; call store.start_scan before {then}"
        )
    return tuple(row)


@_translated
def fail_scan(
    conn: Connection, *, scan_id: str, status: str, reason: str, finished_at: datetime
) -> None:
    """Mark scan ``scan_id`` failed, timed out or refused, with a reason a person can act on.

    ``reason`` must hold no credential value; it is kept to its first 2000
    characters. Idempotent: a scan already finished is left as it is. Raises
    ``PermanentError`` for another status or an unknown scan id.
    """
    if status not in FAILED_STATUSES:
        raise errors.PermanentError(
            f"scan {scan_id}: status {status!r} is not a failure; expected one of "
            f"{', '.join(FAILED_STATUSES)}"
        )
    with conn.transaction():
        row = _lock_scan(conn, scan_id, then="fail_scan")
        if row[0] not in ("pending", "running"):
            return
        conn.execute(
            "UPDATE scans SET status = %s, error = %s, finished_at = %s WHERE id = %s",
            (status, reason[:_MAX_REASON], finished_at, scan_id),
        )


_SCAN_SELECT = """
    SELECT s.id, cl.name, coalesce(s.digest, ''), s.image, s.status, s.mode, s.attempt,
           s.credential_source, s.scanner_version, s.started_at, s.finished_at, s.error,
           (SELECT count(*) FROM findings f WHERE f.scan_id = s.id)
      FROM scans s JOIN clusters cl ON cl.id = s.cluster_id
"""


@_translated
def running_scans(conn: Connection, *, cluster: str, before: datetime) -> list[tuple[str, str]]:
    """(scan id, digest) of the scans of ``cluster`` still running that started before ``before``.

    The sweep fails those whose Job is gone, so that a lost scan is scanned again.
    The digest is "" for a scan started before its digest was known.
    """
    rows = conn.execute(
        """SELECT s.id, coalesce(s.digest, '') FROM scans s
             JOIN clusters cl ON cl.id = s.cluster_id
            WHERE cl.name = %s AND s.status IN ('pending', 'running') AND s.started_at < %s
            ORDER BY s.started_at, s.id""",
        (cluster, before),
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


@_translated
def last_scan(conn: Connection, digest: str) -> ScanRow | None:
    """The most recently started scan of ``digest`` in any cluster and state, or ``None``."""
    row = conn.execute(
        _SCAN_SELECT + " WHERE s.digest = %s ORDER BY s.started_at DESC, s.id DESC LIMIT 1",
        (digest,),
    ).fetchone()
    return None if row is None else ScanRow(*row)


@_translated
def get_scan(conn: Connection, scan_id: str) -> ScanRow | None:
    """The scan called ``scan_id``, or ``None``."""
    row = conn.execute(_SCAN_SELECT + " WHERE s.id = %s", (scan_id,)).fetchone()
    return None if row is None else ScanRow(*row)


@_translated
def import_report(
    conn: Connection,
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
        start_scan(
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


@_translated
def prune_scans(conn: Connection, *, keep: int) -> int:
    """Delete all but the ``keep`` latest finished scans per digest; return how many went.

    Scans without a digest count per image reference instead.

    Scans in progress and the latest successful scan of each digest are always
    kept, so current findings never disappear. Findings go with their scan.
    """
    if keep < 1:
        raise errors.PermanentError(f"retention keep={keep}: keep at least 1 scan per digest")
    with conn.transaction():
        cur = conn.execute(
            """WITH ranked AS (
                   SELECT id, status,
                          row_number() OVER (PARTITION BY coalesce(digest, image)
                                             ORDER BY finished_at DESC, id DESC) AS n,
                          row_number() OVER (PARTITION BY coalesce(digest, image),
                                                          status = 'succeeded'
                                             ORDER BY finished_at DESC, id DESC) AS n_ok
                     FROM scans WHERE finished_at IS NOT NULL)
               DELETE FROM scans s USING ranked r
                WHERE s.id = r.id AND r.n > %s AND NOT (r.status = 'succeeded' AND r.n_ok = 1)""",
            (keep,),
        )
        return cur.rowcount


def _split_image(image: str) -> tuple[str, str]:
    """Registry and repository of ``image``; the whole text as repository if it does not parse.

    A bad reference must still reach the scans table, where its failure is reported.
    """
    try:
        reference = images.parse(image)
    except errors.PermanentError:
        return "", image.split("@", 1)[0]
    return reference.registry, reference.repository


def _execute(conn: Connection, what: str, query: str, params: Sequence[Any]) -> None:
    try:
        conn.execute(query.encode(), params)
    except (psycopg.errors.CheckViolation, psycopg.errors.ForeignKeyViolation) as e:
        detail = e.diag.message_primary or str(e)
        raise errors.PermanentError(f"{what}: refused by the database: {detail}") from e


# ---------------------------------------------------------------------- results


def _upsert_vulnerabilities(
    conn: Connection, vulnerabilities: Sequence[reports.Vulnerability]
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


def _copy_findings(conn: Connection, scan_id: str, findings: Sequence[reports.Finding]) -> None:
    with conn.cursor() as cur, cur.copy(_COPY_FINDINGS) as copy:
        for row in _finding_rows(scan_id, findings):
            copy.write_row(row)


def _insert_findings(conn: Connection, scan_id: str, findings: Sequence[reports.Finding]) -> None:
    with conn.cursor() as cur:
        for row in _finding_rows(scan_id, findings):
            cur.execute(_INSERT_FINDING, row)


# ---------------------------------------------------------------------- reports

ReportBy = Literal["workload", "image", "vulnerability"]


@dataclasses.dataclass(frozen=True)
class ReportTable:
    """Rows of a report query: column names, then one tuple per row in that order."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


# Each query filters the current_findings view the same way (cluster, namespace,
# minimum severity, fixable only), then counts each distinct finding once.
_REPORT_QUERIES: dict[str, str] = {
    "workload": """
    WITH cf AS (
        SELECT * FROM current_findings
         WHERE (%(cluster)s::text IS NULL OR cluster = %(cluster)s)
           AND (%(namespace)s::text IS NULL OR namespace = %(namespace)s)
           AND severity_rank >= %(min_rank)s
           AND (fixable OR NOT %(fixable)s)
    ),
    f AS (SELECT DISTINCT cluster, namespace, workload_kind, workload, digest, vulnerability_id,
                 package, installed_version, target, severity, fixable
            FROM cf)
    SELECT cluster, namespace, workload_kind || '/' || workload AS workload,
           count(*) FILTER (WHERE severity = 'CRITICAL') AS critical,
           count(*) FILTER (WHERE severity = 'HIGH') AS high,
           count(*) FILTER (WHERE severity = 'MEDIUM') AS medium,
           count(*) FILTER (WHERE severity = 'LOW') AS low,
           count(*) FILTER (WHERE severity = 'UNKNOWN') AS unknown,
           count(*) FILTER (WHERE fixable) AS fixable,
           count(*) AS total
      FROM f
     GROUP BY cluster, namespace, workload_kind, workload
     ORDER BY critical DESC, high DESC, medium DESC, low DESC, unknown DESC,
              cluster, namespace, workload_kind, workload""",
    "image": """
    WITH cf AS (
        SELECT * FROM current_findings
         WHERE (%(cluster)s::text IS NULL OR cluster = %(cluster)s)
           AND (%(namespace)s::text IS NULL OR namespace = %(namespace)s)
           AND severity_rank >= %(min_rank)s
           AND (fixable OR NOT %(fixable)s)
    ),
    f AS (SELECT DISTINCT registry, repository, digest, vulnerability_id, package,
                 installed_version, target, severity, fixable
            FROM cf),
    w AS (SELECT digest, string_agg(DISTINCT cluster, ',' ORDER BY cluster) AS clusters,
                 count(DISTINCT (cluster, namespace, workload_kind, workload)) AS workloads
            FROM cf GROUP BY digest)
    SELECT f.registry || '/' || f.repository AS image, f.digest, w.clusters, w.workloads,
           count(*) FILTER (WHERE severity = 'CRITICAL') AS critical,
           count(*) FILTER (WHERE severity = 'HIGH') AS high,
           count(*) FILTER (WHERE severity = 'MEDIUM') AS medium,
           count(*) FILTER (WHERE severity = 'LOW') AS low,
           count(*) FILTER (WHERE severity = 'UNKNOWN') AS unknown,
           count(*) FILTER (WHERE fixable) AS fixable,
           count(*) AS total
      FROM f JOIN w ON w.digest = f.digest
     GROUP BY f.registry, f.repository, f.digest, w.clusters, w.workloads
     ORDER BY critical DESC, high DESC, medium DESC, low DESC, unknown DESC, image, f.digest""",
    "vulnerability": """
    WITH cf AS (
        SELECT * FROM current_findings
         WHERE (%(cluster)s::text IS NULL OR cluster = %(cluster)s)
           AND (%(namespace)s::text IS NULL OR namespace = %(namespace)s)
           AND severity_rank >= %(min_rank)s
           AND (fixable OR NOT %(fixable)s)
    )
    SELECT vulnerability_id,
           (array_agg(severity ORDER BY severity_rank DESC))[1] AS severity,
           max(cvss_score) AS cvss,
           bool_or(fixable) AS fixable,
           count(DISTINCT digest) AS images,
           count(DISTINCT (cluster, namespace, workload_kind, workload)) AS workloads,
           string_agg(DISTINCT package, ',' ORDER BY package) AS packages,
           max(title) AS title
      FROM cf
     GROUP BY vulnerability_id
     ORDER BY max(severity_rank) DESC, workloads DESC, cvss DESC NULLS LAST,
              vulnerability_id""",
}


@_translated
def report(
    conn: Connection,
    *,
    by: ReportBy = "workload",
    cluster: str | None = None,
    namespace: str | None = None,
    min_severity: str = "UNKNOWN",
    fixable: bool = False,
) -> ReportTable:
    """Current findings (the ``current_findings`` view) grouped by workload, image or advisory.

    Filters: one cluster, one namespace, findings at ``min_severity`` or above,
    only findings with a fixed version. Raises ``PermanentError`` for an
    unknown grouping or severity.
    """
    if by not in _REPORT_QUERIES:
        raise errors.PermanentError(
            f"report by {by!r} is not known; expected one of {', '.join(_REPORT_QUERIES)}"
        )
    try:
        min_rank = reports.severity_rank(min_severity)
    except ValueError as e:
        raise errors.PermanentError(f"minimum severity: {e}") from None
    with conn.cursor() as cur:
        cur.execute(
            _REPORT_QUERIES[by].encode(),
            {"cluster": cluster, "namespace": namespace, "min_rank": min_rank, "fixable": fixable},
        )
        columns = tuple(d.name for d in cur.description or ())
        rows = tuple(tuple(r) for r in cur.fetchall())
    return ReportTable(columns, rows)
