"""Scan rows and their state: started, succeeded, failed, pruned; which digests are fresh.

A scan row is the farm's memory of one scan attempt chain of one digest, keyed
by the worker's scan id. The workers move it through its states here
(``start_scan``, ``fail_scan``; ``results.finish_scan`` marks success), the
watcher asks ``fresh_digests``, the sweep ``running_scans``.

It must never reopen a succeeded scan, never store a credential value (only
``credential_source``, where a credential came from), and never write a
report's findings (that is ``results``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import psycopg

from scanqueue import errors, images
from scanqueue.store import db, inventory

ScanStatus = Literal["pending", "running", "succeeded", "failed", "timeout", "refused"]
ScanMode = Literal["registry", "node", "anonymous", "import", "sbom"]
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


@db.translated
def fresh_digests(conn: db.Connection, digests: Iterable[str], *, since: datetime) -> set[str]:
    """The digests among ``digests`` with a successful scan finished at or after ``since``."""
    wanted = sorted(set(digests))
    if not wanted:
        return set()
    # a digest asked for a full scan (its SBOM unusable: scanqueue.sboms) is not fresh
    rows = conn.execute(
        """SELECT DISTINCT digest FROM scans
            WHERE digest = ANY(%s) AND status = 'succeeded' AND finished_at >= %s
              AND digest NOT IN (SELECT digest FROM full_scans_wanted)""",
        (wanted, since),
    ).fetchall()
    return {str(r[0]) for r in rows}


@db.translated
def start_scan(
    conn: db.Connection,
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
    params = {
        "scan_id": scan_id, "cluster": cluster, "digest": digest or None, "image": image,
        "registry": registry, "repository": repository, "mode": mode, "attempt": attempt,
        "source": credential_source, "started_at": started_at,
    }  # fmt: skip
    # One statement, one round trip (it runs once per submit and once per collect). It
    # finds no cluster row only when another transaction inserted it and has not committed
    # yet; then the statement-per-step way below, which retries, is taken.
    try:
        row = db.execute_alone(conn, _START, params)
    except (psycopg.errors.CheckViolation, psycopg.errors.ForeignKeyViolation) as e:
        detail = e.diag.message_primary or str(e)
        raise errors.PermanentError(f"scan {scan_id}: refused by the database: {detail}") from e
    if row is not None and row[0]:
        return
    with conn.transaction():
        params["cluster_id"] = inventory.ensure_cluster(conn, cluster)
        if digest:
            _execute(conn, f"scan {scan_id}", _INSERT_IMAGE, params)
        _execute(conn, f"scan {scan_id}", _UPSERT, params)


_INSERT_IMAGE = """INSERT INTO images (digest, registry, repository)
    SELECT %(digest)s::text, %(registry)s::text, %(repository)s::text
     WHERE %(digest)s::text IS NOT NULL
    ON CONFLICT (digest) DO NOTHING"""
# A higher attempt restarts the row; the same attempt changes nothing; never a succeeded one.
_UPSERT_SCAN = """INSERT INTO scans AS s (id, digest, cluster_id, image, status, mode, attempt,
                           credential_source, started_at)
    SELECT %(scan_id)s, %(digest)s::text, {cluster}, %(image)s, 'running', %(mode)s,
           %(attempt)s, %(source)s, %(started_at)s {rows}
    ON CONFLICT (id) DO UPDATE SET
       status = 'running', mode = EXCLUDED.mode, attempt = EXCLUDED.attempt,
       credential_source = EXCLUDED.credential_source,
       started_at = CASE WHEN EXCLUDED.attempt > s.attempt THEN EXCLUDED.started_at
                         ELSE s.started_at END,
       finished_at = NULL, error = NULL
    WHERE s.status <> 'succeeded'
      AND (EXCLUDED.attempt > s.attempt
           OR (EXCLUDED.attempt = s.attempt AND s.status IN ('pending', 'running')))"""
_UPSERT = _UPSERT_SCAN.format(cluster="%(cluster_id)s", rows="")
_START = f"""WITH new_cluster AS (
        INSERT INTO clusters (name) VALUES (%(cluster)s) ON CONFLICT (name) DO NOTHING RETURNING id
    ), found AS (
        SELECT id FROM new_cluster UNION ALL SELECT id FROM clusters WHERE name = %(cluster)s
    ), image AS (
        {_INSERT_IMAGE}
    ), scan AS (
        {_UPSERT_SCAN.format(cluster="found.id", rows="FROM found LIMIT 1")}
    )
    SELECT EXISTS (SELECT FROM found)"""  # noqa: S608 - our own constants, values are parameters


class ScanNotRecorded(errors.PermanentError):
    """The scan has no row yet: ``start_scan`` first."""


def lock_scan(conn: db.Connection, scan_id: str, *, then: str) -> tuple[Any, ...]:
    """(status, digest) of scan ``scan_id``, its row locked until the transaction ends.

    Raises ``ScanNotRecorded`` for an unknown scan id (``then`` names the caller).
    """
    row = conn.execute(
        "SELECT status, digest FROM scans WHERE id = %s FOR UPDATE", (scan_id,)
    ).fetchone()
    if row is None:
        raise ScanNotRecorded(
            f"scan {scan_id} is not recorded; call store.start_scan before {then}"
        )
    return tuple(row)


@db.translated
def fail_scan(
    conn: db.Connection, *, scan_id: str, status: str, reason: str, finished_at: datetime
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
        row = lock_scan(conn, scan_id, then="fail_scan")
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


@db.translated
def scan_seconds(conn: db.Connection, scan_id: str) -> float | None:
    """Seconds from start to end of scan ``scan_id``; None while it runs or when unknown.

    For the duration metric, once per ended scan: the row alone (``get_scan`` also
    counts the scan's findings)."""
    row = conn.execute(
        "SELECT extract(epoch FROM finished_at - started_at) FROM scans WHERE id = %s",
        (scan_id,),
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


@db.translated
def running_scans(conn: db.Connection, *, cluster: str, before: datetime) -> list[tuple[str, str]]:
    """(scan id, digest) of the scans of ``cluster`` still running that started before ``before``.

    The sweep fails those whose Job is gone, so that a lost scan is scanned again.
    The digest is "" for a scan started before its digest was known.
    """
    rows = conn.execute(
        """SELECT s.id, coalesce(s.digest, '') FROM scans s
             JOIN clusters cl ON cl.id = s.cluster_id
            WHERE cl.name = %s AND s.status IN ('pending', 'running') AND s.started_at < %s
              AND s.mode <> 'sbom'  -- no Job: lost rescans end by sboms.end_lost_rescans
            ORDER BY s.started_at, s.id""",
        (cluster, before),
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


@db.translated
def last_scan(conn: db.Connection, digest: str) -> ScanRow | None:
    """The most recently started scan of ``digest`` in any cluster and state, or ``None``."""
    row = conn.execute(
        _SCAN_SELECT + " WHERE s.digest = %s ORDER BY s.started_at DESC, s.id DESC LIMIT 1",
        (digest,),
    ).fetchone()
    return None if row is None else ScanRow(*row)


@db.translated
def get_scan(conn: db.Connection, scan_id: str) -> ScanRow | None:
    """The scan called ``scan_id``, or ``None``."""
    row = conn.execute(_SCAN_SELECT + " WHERE s.id = %s", (scan_id,)).fetchone()
    return None if row is None else ScanRow(*row)


@db.translated
def prune_scans(conn: db.Connection, *, keep: int) -> int:
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


def _execute(
    conn: db.Connection, what: str, query: str, params: Sequence[Any] | Mapping[str, Any]
) -> None:
    try:
        conn.execute(query.encode(), params)
    except (psycopg.errors.CheckViolation, psycopg.errors.ForeignKeyViolation) as e:
        detail = e.diag.message_primary or str(e)
        raise errors.PermanentError(f"{what}: refused by the database: {detail}") from e
