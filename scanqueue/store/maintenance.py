"""Day-two queries: which digests a rescan selects, and pruning what is long gone.

``select_digests`` turns what an operator names (a cluster, namespace,
workload, image or digest) into the digests running there now;
``prune_gone`` deletes inventory rows of containers gone for longer than the
retention, then the workloads left without any container; ``prune`` does that
and prunes the alert ledger (``store.alerts.prune_ledger``). Scans and their
findings are never touched here (``prune_scans`` keeps those per digest).

It must never delete a container that runs (``gone_at IS NULL``) or one that
went away within the retention.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from scanqueue.store import alerts, db


@dataclasses.dataclass(frozen=True)
class Pruned:
    """What ``prune_gone`` (the first two) and ``prune`` deleted."""

    containers: int
    workloads: int
    alert_outbox: int = 0
    dead_letters: int = 0
    alert_ledger: int = 0


@db.translated
def select_digests(
    conn: db.Connection,
    *,
    clusters: tuple[str, ...] = (),
    namespace: str | None = None,
    workload: str | None = None,
    image: str | None = None,
    digests: tuple[str, ...] = (),
) -> list[tuple[str, str]]:
    """(cluster, digest) of the running containers matching every given filter, sorted.

    ``workload`` is ``KIND/NAME`` or ``NAME``; ``image`` matches the image as
    written in the pod spec, whole or up to its tag (``repo`` matches ``repo:1``).
    """
    kind, _, name = (workload or "").rpartition("/")
    escaped = (image or "").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    params: dict[str, Any] = {
        "clusters": list(clusters) or None,
        "namespace": namespace or None,
        "wname": name or None,
        "wkind": kind or None,
        "image": image or None,
        "tagged": f"{escaped}:%",
        "pinned": f"{escaped}@%",
        "digests": list(digests) or None,
    }
    rows = conn.execute(
        """SELECT DISTINCT cl.name, c.digest FROM containers c
             JOIN clusters cl ON cl.id = c.cluster_id
             JOIN workloads w ON w.id = c.workload_id
            WHERE c.gone_at IS NULL AND c.digest IS NOT NULL
              AND (%(clusters)s::text[] IS NULL OR cl.name = ANY(%(clusters)s::text[]))
              AND (%(namespace)s::text IS NULL OR c.namespace = %(namespace)s::text)
              AND (%(wname)s::text IS NULL OR lower(w.name) = lower(%(wname)s::text))
              AND (%(wkind)s::text IS NULL OR lower(w.kind) = lower(%(wkind)s::text))
              AND (%(image)s::text IS NULL OR c.image = %(image)s::text
                   OR c.image LIKE %(tagged)s::text OR c.image LIKE %(pinned)s::text)
              AND (%(digests)s::text[] IS NULL OR c.digest = ANY(%(digests)s::text[]))
            ORDER BY 1, 2""",
        params,
    ).fetchall()
    return [(str(cluster), str(digest)) for cluster, digest in rows]


@db.translated
def prune_gone(conn: db.Connection, *, gone_before: datetime) -> Pruned:
    """Delete containers gone before ``gone_before`` and the workloads left empty.

    A workload still seen after ``gone_before`` keeps its row even with no
    container (its pods may be between restarts). One transaction.
    """
    with conn.transaction():
        containers = conn.execute(
            "DELETE FROM containers WHERE gone_at IS NOT NULL AND gone_at < %s", (gone_before,)
        ).rowcount
        workloads = conn.execute(
            """DELETE FROM workloads w
                WHERE w.last_seen < %s
                  AND NOT EXISTS (SELECT 1 FROM containers c WHERE c.workload_id = w.id)""",
            (gone_before,),
        ).rowcount
    return Pruned(containers=containers, workloads=workloads)


def prune(
    conn: db.Connection,
    *,
    now: datetime,
    retain_gone_days: int,
    keep_sent_days: int,
    keep_dead_days: int,
) -> Pruned:
    """What ``scanqueue prune`` and the daily task delete: containers gone longer than
    ``retain_gone_days`` (0: none) and their empty workloads, then the alert ledger
    (outbox rows planned ``keep_sent_days`` ago, dead letters ``keep_dead_days`` old
    (0: kept), the dedupe ledger of the workloads no longer in the inventory)."""
    gone = Pruned(0, 0)
    if retain_gone_days:
        gone = prune_gone(conn, gone_before=now - timedelta(days=retain_gone_days))
    dead_before = now - timedelta(days=keep_dead_days) if keep_dead_days else None
    ledger = alerts.prune_ledger(
        conn, planned_before=now - timedelta(days=keep_sent_days), dead_before=dead_before
    )
    return dataclasses.replace(
        gone, alert_outbox=ledger.outbox, dead_letters=ledger.dead_letters,
        alert_ledger=ledger.ledger,
    )  # fmt: skip
