"""What runs where: clusters, workloads and the containers of running pods.

The watcher writes here (``record_containers`` as pods are seen,
``forget_pods`` as they go, ``replace_cluster_inventory`` after a full list);
the report views join these rows to the latest scan of each digest.

It must never store a credential value (a pod's pull secrets are not kept at
all), never delete a row (a container that went away is marked ``gone_at`` and
comes back to life when seen again), and never move ``last_seen`` backwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from scanqueue import errors
from scanqueue.store import db

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


@db.translated
def record_containers(conn: db.Connection, rows: Sequence[ContainerRow]) -> None:
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
            _record_cluster_containers(conn, ensure_cluster(conn, cluster), group)


def _record_cluster_containers(
    conn: db.Connection, cluster_id: int, rows: list[ContainerRow]
) -> None:
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


@db.translated
def forget_pods(
    conn: db.Connection, *, cluster: str, namespace: str, pods: Sequence[str], at: datetime
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


@db.translated
def replace_cluster_inventory(
    conn: db.Connection, *, cluster: str, rows: Sequence[ContainerRow], at: datetime
) -> None:
    """After a full (re)list: record ``rows`` and mark every other container of the cluster gone.

    Containers last seen after ``at`` (by a watch event newer than the list) stay.
    """
    with conn.transaction():
        cluster_id = ensure_cluster(conn, cluster)
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


def ensure_cluster(conn: db.Connection, name: str) -> int:
    """The id of cluster ``name``, its row inserted if new (concurrent callers get one row)."""
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
