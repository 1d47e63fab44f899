"""The periodic sweep: delete scan Jobs and Secrets past their deadline, fail lost scans
(rescans too: a rescan row whose worker died never stays ``running``, rescans on or off).

Safe while scans run: it touches only what outlived deadline + margin, and
never deletes a Secret whose Job may still be starting.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from scanqueue import (
    dedupe,
    errors,
    kube,
    manifests,
    store,
)
from scanqueue.scans import collection, ending, model, rescan
from scanqueue.store import sboms as stored_sboms

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Swept:
    jobs: int = 0
    secrets: int = 0
    scans_failed: int = 0
    scans_pruned: int = 0


def sweep(ctx: model.ScanContext) -> Swept:
    """Delete scan Jobs and Secrets that outlived deadline + margin; fail scans left without a Job.

    Safe to run while scans run: only objects older than their deadline plus
    ``sweep_margin_seconds`` are touched, and a finished Job is left to
    ``collect`` until then.
    """
    scan = ctx.settings.scan
    now = ctx.clock()
    cutoff = now - timedelta(seconds=scan.job_deadline_seconds + scan.sweep_margin_seconds)
    selector = manifests.cluster_selector(ctx.cluster.name)
    jobs = kube.list_jobs(api=ctx.api, namespace=ctx.namespace, label_selector=selector)
    live = {str(j["metadata"]["name"]) for j in jobs}
    deleted_jobs = 0
    for job in jobs:
        if model.created(job) < cutoff:
            state, reason = model.job_state(job)
            try:
                if state in ("complete", "failed"):
                    if collection.collect_safely(ctx, job, state, reason) is None:
                        continue
                else:
                    _left_behind(ctx, job)
                    ending.delete(ctx, str(job["metadata"]["name"]))
            except errors.ScanqueueError as e:
                log.warning("sweeping scan Job %s failed: %s", job["metadata"]["name"], e,
                            extra={"cluster": ctx.cluster.name})  # fmt: skip
                continue
            live.discard(str(job["metadata"]["name"]))
            deleted_jobs += 1
    deleted_secrets = 0
    for secret in kube.list_secrets(api=ctx.api, namespace=ctx.namespace, label_selector=selector):
        owners = {o.get("name") for o in secret["metadata"].get("ownerReferences") or []}
        name = str(secret["metadata"]["name"])
        created = model.created(secret)
        # An orphan gets a grace period: its Job may have been created after our list.
        orphan = not owners & live and created < now - timedelta(seconds=scan.sweep_margin_seconds)
        stale = created < cutoff or orphan
        if stale and kube.delete_secret(api=ctx.api, namespace=ctx.namespace, name=name):
            deleted_secrets += 1
    failed = 0
    with ctx.db.connection() as conn:
        for scan_id, digest in store.running_scans(conn, cluster=ctx.cluster.name, before=cutoff):
            store.fail_scan(
                conn,
                scan_id=scan_id,
                status="failed",
                reason=(
                    f"scan Job vanished from {ctx.cluster.name}/{ctx.namespace} before "
                    "its result was collected; the digest is scanned again"
                ),
                finished_at=now,
            )
            dedupe.release(ctx.redis, digest, scan_id=scan_id)
            failed += 1
        # rescans have no Job: ended by the rescan planner, and here, should rescans be off
        lost = rescan.lost_before(ctx.settings, now)
        failed += stored_sboms.end_lost_rescans(conn, started_before=lost, at=now)
        pruned = store.prune_scans(conn, keep=ctx.settings.database.retention_scans_per_digest)
    return Swept(deleted_jobs, deleted_secrets, failed, pruned)


def _left_behind(ctx: model.ScanContext, job: Mapping[str, Any]) -> None:
    labels = job["metadata"].get("labels") or {}
    scan_id = str(labels.get(manifests.LABEL_SCAN_ID, ""))
    with ctx.db.connection() as conn:
        row = store.get_scan(conn, scan_id) if scan_id else None
        if row is not None:
            store.fail_scan(
                conn,
                scan_id=scan_id,
                status="timeout",
                reason=(
                    f"scan Job {ctx.namespace}/{job['metadata']['name']} still had not "
                    "finished past its deadline plus the sweep margin; deleted"
                ),
                finished_at=ctx.clock(),
            )
            dedupe.release(ctx.redis, row.digest, scan_id=scan_id)
