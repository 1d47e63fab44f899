"""Alert bookkeeping in Postgres: the outbox, the dedupe ledger, deliveries and dead letters.

``enqueue`` runs inside a scan's own ingest transaction (``finish_scan``): one
tiny row, so alerting never slows or fails a scan and is never lost when a
worker dies after the scan committed. ``plan`` turns outbox rows into
deliveries (one per workload with new qualifying findings and per webhook);
``claim`` / ``sent`` / ``failed`` record each POST attempt; a delivery given
up is a dead letter (the ``alert_dead_letters`` view). Which findings qualify
is decided by ``scanqueue.alerts.Rule`` alone; this module only reads and writes.

It must never store a webhook URL (deliveries name ``kind#index``) or a
credential, and never alert twice for the same finding on the same workload:
``alerted_findings`` is the ledger, written in the same transaction as the
deliveries it causes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from scanqueue import alerts
from scanqueue.store import db


def enqueue(conn: db.Connection, scan_id: str) -> None:
    """Record that scan ``scan_id`` succeeded and may alert (call inside its transaction)."""
    conn.execute(
        "INSERT INTO alert_outbox (scan_id) VALUES (%s) ON CONFLICT (scan_id) DO NOTHING",
        (scan_id,),
    )


_SCAN = "SELECT digest, finished_at FROM scans WHERE id = %s AND status = 'succeeded'"
_FINDINGS = """
SELECT DISTINCT ON (f.vulnerability_id, f.package)
       f.vulnerability_id, f.severity, f.package, f.installed_version, f.fixed_version,
       v.title, v.url
  FROM findings f JOIN vulnerabilities v ON v.id = f.vulnerability_id
 WHERE f.scan_id = %s AND severity_rank(f.severity) >= %s
 ORDER BY f.vulnerability_id, f.package, f.fixed_version DESC, f.installed_version"""
_WORKLOADS = """
SELECT cluster, namespace, workload_kind, workload, min(image)
  FROM workload_images WHERE digest = %s
 GROUP BY cluster, namespace, workload_kind, workload
 ORDER BY cluster, namespace, workload_kind, workload"""
_LEDGER = """
INSERT INTO alerted_findings
       (cluster, namespace, workload_kind, workload, vulnerability_id, package, scan_id)
SELECT r.cluster, r.namespace, r.workload_kind, r.workload, r.vulnerability_id, r.package, %s
  FROM jsonb_to_recordset(%s::jsonb) AS r(cluster text, namespace text, workload_kind text,
       workload text, vulnerability_id text, package text)
    ON CONFLICT DO NOTHING
RETURNING cluster, namespace, workload_kind, workload, vulnerability_id, package"""


@db.translated
def plan(
    conn: db.Connection,
    *,
    rule: alerts.Rule,
    webhooks: Sequence[str],
    now: datetime,
    max_age_seconds: int,
    limit: int = 100,
) -> list[int]:
    """Plan up to ``limit`` outbox rows; return the ids of the deliveries created.

    Each row is planned in its own transaction, locked with SKIP LOCKED, so
    two planners never plan the same scan. A scan that finished more than
    ``max_age_seconds`` before ``now`` is marked planned and alerts nothing.
    """
    created: list[int] = []
    for _ in range(limit):
        with conn.transaction():
            row = conn.execute(
                """SELECT o.scan_id FROM alert_outbox o WHERE o.planned_at IS NULL
                    ORDER BY o.created_at, o.scan_id LIMIT 1 FOR UPDATE SKIP LOCKED"""
            ).fetchone()
            if row is None:
                break
            created += _plan_scan(
                conn, str(row[0]), rule=rule, webhooks=webhooks, now=now, max_age=max_age_seconds
            )
            conn.execute(
                "UPDATE alert_outbox SET planned_at = %s WHERE scan_id = %s", (now, row[0])
            )
    return created


def _plan_scan(
    conn: db.Connection,
    scan_id: str,
    *,
    rule: alerts.Rule,
    webhooks: Sequence[str],
    now: datetime,
    max_age: int,
) -> list[int]:
    scan = conn.execute(_SCAN, (scan_id,)).fetchone()
    if scan is None or scan[1] is None or scan[1] < now - timedelta(seconds=max_age):
        return []
    digest, scanned_at = str(scan[0]), scan[1]
    findings = {
        (r[0], r[2]): alerts.NewFinding(*(str(v or "") for v in r))
        for r in conn.execute(_FINDINGS, (scan_id, rule.min_rank))
        if rule.qualifies(str(r[1]), str(r[4] or ""))
    }
    workloads = {(r[0], r[1], r[2], r[3]): str(r[4]) for r in conn.execute(_WORKLOADS, (digest,))}
    if not findings or not workloads or not webhooks:
        return []
    candidates = [
        {"cluster": w[0], "namespace": w[1], "workload_kind": w[2], "workload": w[3],
         "vulnerability_id": key[0], "package": key[1]}
        for w in workloads for key in findings
    ]  # fmt: skip
    new: dict[tuple[str, str, str, str], list[alerts.NewFinding]] = {}
    for r in conn.execute(_LEDGER, (scan_id, Jsonb(candidates))):
        new.setdefault((r[0], r[1], r[2], r[3]), []).append(findings[(r[4], r[5])])
    ids: list[int] = []
    for workload, new_findings in sorted(new.items()):
        note = alerts.notification(
            scan_id=scan_id,
            workload=workload,
            image=workloads[workload],
            digest=digest,
            scanned_at=scanned_at,
            findings=new_findings,
        )
        for webhook in webhooks:
            found = conn.execute(
                """INSERT INTO alert_deliveries (scan_id, cluster, namespace, workload_kind,
                          workload, webhook, notification, next_attempt_at, created_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT DO NOTHING RETURNING id""",
                (scan_id, *workload, webhook, Jsonb(alerts.to_json(note)), now, now),
            ).fetchone()
            if found is not None:
                ids.append(int(found[0]))
    return ids


@dataclasses.dataclass(frozen=True)
class Delivery:
    id: int
    webhook: str  # kind#index
    notification: dict[str, Any]
    attempts: int  # including the one just claimed


@db.translated
def due(conn: db.Connection, *, now: datetime, lease_seconds: float, limit: int = 100) -> list[int]:
    """Pending deliveries whose time has come (new, or a retry that was lost); lease them.

    The lease (``next_attempt_at`` moved ``lease_seconds`` ahead) keeps the next
    pass from handing out the same delivery while its task is on the way.
    """
    with conn.transaction():
        rows = conn.execute(
            """UPDATE alert_deliveries SET next_attempt_at = %s
                WHERE id IN (SELECT id FROM alert_deliveries
                              WHERE state = 'pending' AND next_attempt_at <= %s
                              ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED)
            RETURNING id""",
            (now + timedelta(seconds=lease_seconds), now, limit),
        ).fetchall()
    return sorted(int(r[0]) for r in rows)


@db.translated
def claim(
    conn: db.Connection, delivery_id: int, *, now: datetime, lease_seconds: float
) -> Delivery | None:
    """Count one more attempt of a pending delivery and lease it; None when not pending."""
    with conn.transaction():
        row = conn.execute(
            """UPDATE alert_deliveries SET attempts = attempts + 1, next_attempt_at = %s
                WHERE id = %s AND state = 'pending'
            RETURNING id, webhook, notification, attempts""",
            (now + timedelta(seconds=lease_seconds), delivery_id),
        ).fetchone()
    if row is None:
        return None
    return Delivery(int(row[0]), str(row[1]), dict(row[2]), int(row[3]))


@db.translated
def sent(conn: db.Connection, delivery_id: int, *, now: datetime) -> None:
    with conn.transaction():
        conn.execute(
            """UPDATE alert_deliveries SET state = 'sent', finished_at = %s, last_error = NULL
                WHERE id = %s AND state = 'pending'""",
            (now, delivery_id),
        )


@db.translated
def failed(
    conn: db.Connection, delivery_id: int, *, error: str, now: datetime, retry_at: datetime | None
) -> None:
    """Record a failed attempt: retried at ``retry_at``, or a dead letter when it is None."""
    with conn.transaction():
        if retry_at is None:
            conn.execute(
                """UPDATE alert_deliveries SET state = 'dead', finished_at = %s, last_error = %s
                    WHERE id = %s AND state = 'pending'""",
                (now, error, delivery_id),
            )
        else:
            conn.execute(
                """UPDATE alert_deliveries SET next_attempt_at = %s, last_error = %s
                    WHERE id = %s AND state = 'pending'""",
                (retry_at, error, delivery_id),
            )


@db.translated
def prune(conn: db.Connection, *, sent_before: datetime) -> int:
    """Delete deliveries sent before ``sent_before`` (dead letters stay); return how many.

    The ledger (``alerted_findings``) is kept: it is what keeps a finding from
    alerting twice, and it grows with workloads and findings, not with time.
    """
    with conn.transaction():
        cur = conn.execute(
            "DELETE FROM alert_deliveries WHERE state = 'sent' AND finished_at < %s",
            (sent_before,),
        )
    return int(cur.rowcount or 0)


@dataclasses.dataclass(frozen=True)
class LedgerPruned:
    """What ``prune_ledger`` deleted."""

    outbox: int  # outbox rows planned long ago
    dead_letters: int  # deliveries given up long ago
    ledger: int  # alerted_findings rows of workloads gone from the inventory


@db.translated
def prune_ledger(
    conn: db.Connection, *, planned_before: datetime, dead_before: datetime | None
) -> LedgerPruned:
    """Delete what alerting no longer needs, in one transaction:

    - outbox rows planned before ``planned_before`` (a planned scan is never planned
      again: a succeeded scan is never ingested twice, so its row cannot come back);
    - dead letters that ended before ``dead_before`` (None: kept forever);
    - ledger rows of workloads the inventory no longer has (``prune_gone`` deleted
      them, gone for ``database.retain_gone_days``): nothing is left for them to keep
      from alerting twice; such a workload that comes back alerts as a new one.

    Never a ledger row of a workload still in the inventory, running or not: that
    would alert its findings again.
    """
    with conn.transaction():
        outbox = conn.execute(
            "DELETE FROM alert_outbox WHERE planned_at < %s", (planned_before,)
        ).rowcount
        dead = 0
        if dead_before is not None:
            dead = conn.execute(
                "DELETE FROM alert_deliveries WHERE state = 'dead' AND finished_at < %s",
                (dead_before,),
            ).rowcount
        ledger = conn.execute(
            """DELETE FROM alerted_findings a
                WHERE NOT EXISTS (
                      SELECT 1 FROM workloads w JOIN clusters cl ON cl.id = w.cluster_id
                       WHERE cl.name = a.cluster AND w.namespace = a.namespace
                         AND w.kind = a.workload_kind AND w.name = a.workload)"""
        ).rowcount
    return LedgerPruned(int(outbox or 0), int(dead or 0), int(ledger or 0))
