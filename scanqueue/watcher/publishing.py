"""Which digests get a scan, farm-wide, and the scan tasks published for them.

A digest not decided yet goes through ``dedupe.claim`` (fresh? failed here? in flight
elsewhere?); only a claimed digest is published, once for the whole farm. Postgres is
asked about the digests Redis does not know (Redis may have lost its keys).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Set
from datetime import datetime, timedelta
from typing import Any

import redis

from scanqueue import config, dedupe, discovery, errors, metrics, publish, store
from scanqueue.watcher import inventory

log = logging.getLogger(__name__)

FRESH_HINT_SECONDS = 600  # Postgres said fresh: Redis remembers it this long at most


@dataclasses.dataclass(frozen=True)
class Decided:
    """What one pass decided: digests settled (claimed and published, fresh, or held
    elsewhere), and the claimed ones whose publishing failed (to try again)."""

    settled: frozenset[str]
    failed: Mapping[str, discovery.ScanRequest]


def decide(
    checks: Mapping[str, discovery.ScanRequest],
    now: datetime,
    *,
    cluster: str,
    scan: config.ScanSettings,
    redis_client: redis.Redis,
    pool: Any,
    publisher: publish.Publisher,
    new_pullers: Set[str],
) -> Decided:
    """Claim what needs a scan farm-wide and publish it; count the rest as dedupe hits.

    ``new_pullers``: digests that run with new pull secrets, whose credential failure in
    this cluster ends now. Raises ``TemporaryError`` when Redis or Postgres fail before
    anything was claimed (the caller retries every check).
    """
    digests = list(checks)
    interval = scan.rescan_interval_seconds
    if new_pullers:  # new pull secrets: a refused credential may work now
        dedupe.clear_failed_of_kind(
            redis_client, sorted(new_pullers), cluster=cluster, kind="credential"
        )
    unknown = dedupe.unsettled(redis_client, cluster=cluster, digests=digests)
    fresh: set[str] = set()
    if unknown:  # Redis may have lost its keys (restart): Postgres remembers scans
        try:
            with pool.connection(timeout=inventory.POOL_WAIT_SECONDS) as conn:
                fresh = store.fresh_digests(conn, unknown, since=now - timedelta(seconds=interval))
        except errors.ScanqueueError:
            raise
        except Exception as e:
            raise errors.TemporaryError(f"Postgres: {type(e).__name__}: {e}") from e
        if fresh:
            dedupe.mark_many_fresh(
                redis_client, fresh, ttl_seconds=min(interval, FRESH_HINT_SECONDS)
            )
    if fresh:
        metrics.DEDUPE_HITS.labels(cluster, "fresh").inc(len(fresh))
    decisions = dedupe.claim(
        redis_client,
        cluster=cluster,
        digests=[d for d in digests if d not in fresh],
        ttl_seconds=scan.inflight_ttl_seconds,
    )
    decided = set(fresh)
    failed: dict[str, discovery.ScanRequest] = {}
    claimed = []
    for decision in decisions:
        if decision.status == "claimed":
            claimed.append(decision)
        else:
            metrics.DEDUPE_HITS.labels(cluster, decision.status).inc()
            decided.add(decision.digest)
    published = metrics.TASKS_PUBLISHED.labels(cluster)
    try:
        if claimed:
            with publisher.batch() as producer:
                for decision in claimed:
                    request = dataclasses.replace(checks[decision.digest], scan_id=decision.scan_id)
                    publisher.publish(request, producer=producer)
                    decided.add(decision.digest)
                    published.inc()
                    log.info(
                        "published scan of %s for %s/%s",
                        request.digest,
                        request.namespace,
                        request.pod,
                        extra=log_context(cluster, request),
                    )
    except errors.ScanqueueError as e:
        log.warning("cluster %s: publishing stopped: %s", cluster, e, extra=log_context(cluster))
        for decision in claimed:
            if decision.digest not in decided:  # hand the claim back; retried next flush
                dedupe.release(redis_client, decision.digest, scan_id=decision.scan_id)
                failed[decision.digest] = checks[decision.digest]
    return Decided(frozenset(decided), failed)


def log_context(cluster: str, request: discovery.ScanRequest | None = None) -> dict[str, Any]:
    """The ``extra`` of a watcher log line: the cluster, and the scan it is about."""
    if request is None:
        return {"cluster": cluster}
    return {
        "cluster": cluster,
        "scan_id": request.scan_id,
        "digest": request.digest,
        "namespace": request.namespace,
        "pod": request.pod,
        "container": request.container,
        "image": request.image,
        "queue": publish.queue_name(cluster),
    }
