"""Stored SBOMs, the DB each evaluation used, and which running digests are due (rescans).

``keep`` stores a digest's package list once (from its first full scan with
one); ``get`` reads it back for a rescan or ``scanqueue sbom``; ``due``
selects the running digests whose next evaluation is due, oldest first,
at most ``limit`` (the rate limit); ``want_full_scan`` asks the watcher for
a full scan (``scans.fresh_digests`` does not count such a digest fresh).

It must never store a second SBOM over the first (a digest's content never
changes), never select a digest that runs nowhere, and never hold a
credential: only package lists, versions and times.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from scanqueue import sboms
from scanqueue.store import db


@dataclasses.dataclass(frozen=True)
class StoredSbom:
    digest: str
    document: bytes  # compressed (sboms.COMPRESSION)
    size_bytes: int
    packages: int
    scanner_version: str | None
    scan_id: str
    created_at: datetime


@dataclasses.dataclass(frozen=True)
class Due:
    """A running digest due for its next evaluation."""

    digest: str
    cluster: str  # a cluster where it runs (the scan row's cluster)
    image: str  # REPOSITORY@DIGEST as last scanned
    evaluation: sboms.Evaluation


@db.translated
def keep(
    conn: db.Connection,
    *,
    digest: str,
    scan_id: str,
    packed: sboms.Packed,
    scanner_version: str | None,
) -> bool:
    """Store ``packed`` as the SBOM of ``digest`` unless one is stored; count the full scan
    ``scan_id`` as evaluated against the DB the farm observed last (``observe_db``); end any
    wish for a full scan. One statement. Returns whether this call stored the SBOM."""
    with conn.transaction():
        row = conn.execute(
            """WITH kept AS (
               INSERT INTO sboms (digest, format, compression, document, size_bytes, packages,
                                  scanner_version, scan_id)
               VALUES (%(digest)s, %(format)s, %(compression)s, %(document)s, %(size)s,
                       %(packages)s, %(version)s, %(scan_id)s)
               ON CONFLICT (digest) DO NOTHING RETURNING digest
           ), evaluated AS (
               UPDATE scans SET db_updated_at = (SELECT updated_at FROM vulnerability_db)
                WHERE id = %(scan_id)s AND db_updated_at IS NULL
           ), done AS (
               DELETE FROM full_scans_wanted WHERE digest = %(digest)s
           )
           SELECT count(*) FROM kept""",
            {
                "digest": digest,
                "format": sboms.FORMAT,
                "compression": sboms.COMPRESSION,
                "document": packed.document,
                "size": packed.size_bytes,
                "packages": packed.packages,
                "version": scanner_version,
                "scan_id": scan_id,
            },
        ).fetchone()
    return bool(row and row[0])


@db.translated
def full_scan_done(conn: db.Connection, *, digest: str, scan_id: str) -> None:
    """A full scan of ``digest`` succeeded without a usable package list: count it against
    the DB observed last and end any wish for a full scan."""
    with conn.transaction():
        conn.execute(
            """UPDATE scans SET db_updated_at = (SELECT updated_at FROM vulnerability_db)
                WHERE id = %s AND db_updated_at IS NULL""",
            (scan_id,),
        )
        conn.execute("DELETE FROM full_scans_wanted WHERE digest = %s", (digest,))


@db.translated
def get(conn: db.Connection, digest: str) -> StoredSbom | None:
    """The stored SBOM of ``digest`` (still compressed), or None."""
    row = conn.execute(
        """SELECT digest, document, size_bytes, packages, scanner_version, scan_id, created_at
             FROM sboms WHERE digest = %s""",
        (digest,),
    ).fetchone()
    if row is None:
        return None
    return StoredSbom(str(row[0]), bytes(row[1]), int(row[2]), int(row[3]),
                      row[4], str(row[5]), row[6])  # fmt: skip


@db.translated
def want_full_scan(conn: db.Connection, *, digest: str, reason: str) -> None:
    """Ask for a full scan of ``digest``: the watcher no longer counts it fresh until one
    succeeds (the caller also forgets Redis's fresh mark). A stored SBOM is deleted (it
    is not used: unreadable, or from a Trivy too old), so that the full scan keeps its own."""
    with conn.transaction():
        conn.execute(
            """INSERT INTO full_scans_wanted (digest, reason) VALUES (%s, %s)
               ON CONFLICT (digest) DO UPDATE SET reason = EXCLUDED.reason""",
            (digest, reason[:2000]),
        )
        conn.execute("DELETE FROM sboms WHERE digest = %s", (digest,))


@db.translated
def record_evaluation(conn: db.Connection, *, scan_id: str, db_updated_at: datetime) -> None:
    """Record the DB that scan ``scan_id`` was evaluated against."""
    with conn.transaction():
        conn.execute("UPDATE scans SET db_updated_at = %s WHERE id = %s", (db_updated_at, scan_id))


@db.translated
def observe_db(
    conn: db.Connection, *, updated_at: datetime, trivy_version: str | None, source: str,
    at: datetime,
) -> None:  # fmt: skip
    """Record the vulnerability DB the farm's rescans use now."""
    with conn.transaction():
        conn.execute(
            """INSERT INTO vulnerability_db (id, updated_at, trivy_version, source, observed_at)
               VALUES (true, %s, %s, %s, %s)
               ON CONFLICT (id) DO UPDATE SET updated_at = EXCLUDED.updated_at,
                   trivy_version = EXCLUDED.trivy_version, source = EXCLUDED.source,
                   observed_at = EXCLUDED.observed_at""",
            (updated_at, trivy_version, source, at),
        )


@db.translated
def current_db(conn: db.Connection) -> datetime | None:
    """The DB's UpdatedAt as last observed, or None when never observed."""
    row = conn.execute("SELECT updated_at FROM vulnerability_db").fetchone()
    return None if row is None else row[0]


# The last succeeded evaluation per running digest, with its SBOM and any full-scan wish.
_EVALUATIONS = """
WITH running AS (
    SELECT c.digest, min(cl.name) AS cluster FROM containers c
      JOIN clusters cl ON cl.id = c.cluster_id
     WHERE c.gone_at IS NULL AND c.digest IS NOT NULL
       AND (%(digests)s::text[] IS NULL OR c.digest = ANY(%(digests)s::text[]))
     GROUP BY c.digest
), last AS (
    SELECT DISTINCT ON (s.digest) s.digest, s.finished_at, s.db_updated_at, s.image
      FROM scans s JOIN running r ON r.digest = s.digest
     WHERE s.status = 'succeeded'
     ORDER BY s.digest, s.finished_at DESC, s.id DESC
)
SELECT r.digest, r.cluster, l.image, l.finished_at, l.db_updated_at,
       sb.scanner_version, sb.digest IS NOT NULL, w.reason,
       EXISTS (SELECT 1 FROM scans p WHERE p.digest = r.digest
                 AND p.status IN ('pending', 'running') AND p.started_at > %(busy_since)s)
  FROM running r
  JOIN last l ON l.digest = r.digest
  LEFT JOIN sboms sb ON sb.digest = r.digest
  LEFT JOIN full_scans_wanted w ON w.digest = r.digest
"""


@db.translated
def evaluations(
    conn: db.Connection, *, busy_since: datetime, digests: list[str] | None = None
) -> list[tuple[Due, bool]]:
    """Every running, evaluated digest (or those of ``digests``) with whether a scan of it is
    under way (started after ``busy_since``), oldest evaluation first."""
    rows = conn.execute(
        _EVALUATIONS + " ORDER BY l.finished_at, r.digest",
        {"digests": digests, "busy_since": busy_since},
    ).fetchall()
    found = []
    for digest, cluster, image, finished, db_at, version, has_sbom, wanted, busy in rows:
        evaluation = sboms.Evaluation(finished, db_at, version, bool(has_sbom), wanted)
        found.append((Due(str(digest), str(cluster), str(image), evaluation), bool(busy)))
    return found


@db.translated
def stored_sizes(conn: db.Connection) -> tuple[int, int, int]:
    """(SBOMs stored, their total uncompressed bytes, their total stored bytes)."""
    row = conn.execute(
        "SELECT count(*), coalesce(sum(size_bytes), 0), coalesce(sum(octet_length(document)), 0)"
        " FROM sboms"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


@db.translated
def end_lost_rescans(conn: db.Connection, *, started_before: datetime, at: datetime) -> int:
    """Fail the rescans still running that started before ``started_before`` (their task was
    lost with a worker); the planner picks their digests again. Returns how many."""
    with conn.transaction():
        return conn.execute(
            """UPDATE scans SET status = 'failed', finished_at = %s,
                      error = 'rescan task lost (worker gone?); planned again'
                WHERE mode = 'sbom' AND status IN ('pending', 'running') AND started_at < %s""",
            (at, started_before),
        ).rowcount


@db.translated
def begin_rescan(conn: db.Connection, *, scan_id: str, at: datetime) -> bool:
    """Stamp rescan ``scan_id`` as started ``at`` if it is still queued or running; return
    whether it is (False: it succeeded already, or was ended as lost: nothing to run)."""
    with conn.transaction():
        row = conn.execute(
            """UPDATE scans SET started_at = greatest(started_at, %s)
                WHERE id = %s AND mode = 'sbom' AND status IN ('pending', 'running')
            RETURNING 1""",
            (at, scan_id),
        ).fetchone()
    return row is not None


@db.translated
def rescans_in_flight(conn: db.Connection, *, since: datetime) -> int:
    """Rescans queued or running that started after ``since`` (older ones count as lost)."""
    row = conn.execute(
        """SELECT count(*) FROM scans
            WHERE mode = 'sbom' AND status IN ('pending', 'running') AND started_at > %s""",
        (since,),
    ).fetchone()
    return int(row[0]) if row else 0


@db.translated
def evaluation(conn: db.Connection, digest: str) -> sboms.Evaluation:
    """The last successful evaluation of ``digest`` (running or not), its SBOM and any wish
    for a full scan: what ``sboms.decide`` needs (``scanqueue explain``)."""
    row = conn.execute(
        """SELECT (SELECT finished_at FROM scans WHERE digest = %(d)s AND status = 'succeeded'
                    ORDER BY finished_at DESC, id DESC LIMIT 1),
                  (SELECT db_updated_at FROM scans WHERE digest = %(d)s AND status = 'succeeded'
                    ORDER BY finished_at DESC, id DESC LIMIT 1),
                  (SELECT scanner_version FROM sboms WHERE digest = %(d)s),
                  EXISTS (SELECT 1 FROM sboms WHERE digest = %(d)s),
                  (SELECT reason FROM full_scans_wanted WHERE digest = %(d)s)""",
        {"d": digest},
    ).fetchone()
    assert row is not None
    return sboms.Evaluation(row[0], row[1], row[2], bool(row[3]), row[4])
