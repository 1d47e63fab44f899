"""How a scan ends without a result, and how a scan Job is deleted with its slot.

Used by submit, collect and sweep alike. It must never leave a slot taken
for a Job it deleted, nor keep a digest in flight after its scan ended.
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

from scanqueue import (
    dedupe,
    discovery,
    failures,
    kube,
    manifests,
    store,
)
from scanqueue.scans import model, pending

log = logging.getLogger(__name__)
INFLIGHT_REFRESHES = 4  # times per inflight_ttl_seconds the waiting scans' claims are renewed


def end(
    ctx: model.ScanContext,
    request: discovery.ScanRequest,
    *,
    status: Literal["failed", "timeout", "refused"],
    reason: str,
    attempt: int,
) -> model.Result:
    """Record a scan that ends without a result; let another cluster try the digest."""
    digest = request.digest or ""
    with ctx.db.connection() as conn:
        store.start_scan(
            conn,
            scan_id=request.scan_id,
            cluster=request.cluster,
            digest=digest,
            image=request.image if "@" in request.image else f"{request.image}@{digest}",
            mode="registry",
            attempt=attempt,
            credential_source=None,
            started_at=ctx.clock(),
        )
        store.fail_scan(
            conn, scan_id=request.scan_id, status=status, reason=reason, finished_at=ctx.clock()
        )
    kind = failures.kind(status, reason)  # the wait before this cluster tries again
    dedupe.mark_failed_backoff(
        ctx.redis,
        digest,
        cluster=request.cluster,
        kind=kind,
        scan_id=request.scan_id,
        delay=functools.partial(failures.delay, kind, scan=ctx.settings.scan),
        window_seconds=ctx.settings.scan.rescan_interval_seconds,
    )
    log.warning(
        "scan ended without a result",
        extra={"scan_id": request.scan_id, "cluster": request.cluster, "digest": digest,
               "status": status, "reason": reason},
    )  # fmt: skip
    return model.Result(status, request.scan_id, digest, detail=reason)


def fail(ctx: model.ScanContext, request: discovery.ScanRequest, *, reason: str) -> model.Result:
    """End ``request`` as failed with ``reason`` (bad input, retries exhausted).

    Its slot (taken by its first submit, which kept it for the retries) goes to
    the next waiting scan.
    """
    result = end(ctx, request, status="failed", reason=reason, attempt=1)
    cluster = ctx.cluster.name
    pending.forget(ctx.redis, cluster=cluster, scan_id=request.scan_id,
                   namespace=request.namespace)  # fmt: skip
    if request.digest:
        free_slot(ctx, manifests.job_name(cluster, request.digest, 1))
    return result


def free_slot(ctx: model.ScanContext, job_name: str) -> None:
    """Give back the slot of ``job_name`` and start the next waiting scan in it."""
    if ctx.publish is None:
        dedupe.free_job_slot(ctx.redis, cluster=ctx.cluster.name, job=job_name)
        return
    start_waiting(ctx, freeing=job_name)


def start_waiting(
    ctx: model.ScanContext, *, stale_after: float | None = None, freeing: str = ""
) -> int:
    """Publish the scan tasks of waiting scans while slots are free; return how many.

    With ``stale_after`` (the periodic pass, the safety net), scans started more
    than that many seconds ago whose task never arrived are published again.
    ``freeing``: a Job whose slot is given back first (in the same Redis script).
    """
    if ctx.publish is None:
        return 0
    now = ctx.clock().timestamp()
    cluster = ctx.cluster.name
    payloads = pending.start(ctx.redis, cluster=cluster, limit=ctx.cluster.max_inflight,
                             now=now, max_age=ctx.slot_max_age, freeing=freeing)  # fmt: skip
    if stale_after is not None:
        payloads += pending.restart_stale(ctx.redis, cluster=cluster, now=now,
                                          older_than=stale_after)  # fmt: skip
        # a scan may wait longer than its digest's claim lasts: renew the claims
        ttl = ctx.settings.scan.inflight_ttl_seconds
        pending.refresh_inflight(ctx.redis, cluster=cluster, ttl_seconds=ttl,
                                 every_seconds=ttl // INFLIGHT_REFRESHES)  # fmt: skip
    for payload in payloads:
        ctx.publish(payload)
    return len(payloads)


def delete(ctx: model.ScanContext, job_name: str, *, secret: bool = True) -> None:
    """Delete a scan Job (its pods and Secret follow by ownership) and give back its slot;
    with ``secret``, delete its Secret explicitly too, so that a credential never waits on
    the garbage collector (skipped only where the Job never had one)."""
    kube.delete_job(api=ctx.api, namespace=ctx.namespace, name=job_name)
    if secret:
        kube.delete_secret(
            api=ctx.api, namespace=ctx.namespace, name=manifests.secret_name(job_name)
        )
    free_slot(ctx, job_name)
