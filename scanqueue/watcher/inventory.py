"""The watcher's inventory writes: the picture of a cluster as container rows in Postgres.

After a full (re)list the whole cluster is replaced at once; in between, upserts and
forgotten pods are written in batches. Runs on the watcher's one inventory thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from scanqueue import errors, metrics, store
from scanqueue.watcher.picture import Pod, PodKey

POOL_WAIT_SECONDS = 5.0  # a flush waits this long for a Postgres connection, then retries later


def write(
    pool: Any,
    *,
    cluster: str,
    replace: bool,
    pods: list[tuple[PodKey, Pod]],
    upserts: list[tuple[PodKey, Pod]],
    forgets: Mapping[PodKey, datetime],
    now: datetime,
) -> bool:
    """Write what waits; return False when nothing did. Raises ``TemporaryError`` (Postgres)."""
    if not replace and not upserts and not forgets:
        return False
    try:
        with pool.connection(timeout=POOL_WAIT_SECONDS) as conn:
            if replace:
                # Everything in the picture runs now: seen at ``now``, which also keeps
                # the store's "not in rows" check to the containers that are gone.
                found = rows(cluster, pods, seen_at=now)
                store.replace_cluster_inventory(conn, cluster=cluster, rows=found, at=now)
            else:
                found = rows(cluster, upserts)
                if found:
                    store.record_containers(conn, found)
                by_namespace: dict[tuple[str, datetime], list[str]] = {}
                for (namespace, pod), at in forgets.items():
                    by_namespace.setdefault((namespace, at), []).append(pod)
                for (namespace, at), names in by_namespace.items():
                    store.forget_pods(conn, cluster=cluster, namespace=namespace, pods=names, at=at)
    except errors.ScanqueueError:
        raise
    except Exception as e:  # psycopg errors stay inside store; the pool's are translated here
        raise errors.TemporaryError(f"Postgres: {type(e).__name__}: {e}") from e
    metrics.INVENTORY_ROWS.labels(cluster).inc(len(found))
    return True


def rows(
    cluster: str, pods: Iterable[tuple[PodKey, Pod]], *, seen_at: datetime | None = None
) -> list[store.ContainerRow]:
    """A row per running container of ``pods`` (seen at ``seen_at``, or when each was seen)."""
    return [
        store.ContainerRow(
            cluster=cluster,
            namespace=r.namespace,
            workload_kind=r.workload_kind,
            workload_name=r.workload_name,
            pod=r.pod,
            container=r.container,
            container_type=r.container_type,
            image=r.image,
            digest=r.digest,
            node=r.node,
            seen_at=seen_at or entry.seen_at,
        )
        for _, entry in pods
        for r in entry.requests
    ]
