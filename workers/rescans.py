"""The rescan tasks: thin wrappers around ``scanqueue.scans.rescan``.

- ``scanqueue.rescan.plan`` (beat, every ``rescan.plan_interval_seconds``):
  observe the vulnerability DB, pick the due running digests (rate-limited by
  ``rescan.max_per_plan``), publish one ``run`` each or ask a full scan.
- ``scanqueue.rescan.run``: ``trivy sbom`` on one digest's stored SBOM, stored
  as a scan row of mode ``sbom``. Retried with backoff while Trivy's server
  or the database is away.

Both on the ``scanqueue.rescan`` queue, which no cluster owns: a worker
serving it needs the trivy binary and the farm's Trivy server (or a DB
cache), never a kubeconfig or a credential. Nothing here runs unless
``rescan.enabled``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis.exceptions
from celery import Task

import workers.tasks  # noqa: F401  (its beat schedule is set first; ours is added to it)
from scanqueue import config, dedupe, errors, metrics, store
from scanqueue.scans import rescan
from workers.app import app, settings_of

log = logging.getLogger(__name__)

MAX_RETRIES = 8  # then the rescan ends failed; the next plan pass picks the digest again
_rescanner: list[rescan.Rescanner] = []
_lock = threading.Lock()


def rescanner() -> rescan.Rescanner:
    """This process's collaborators for rescans (made on first use, after the fork)."""
    with _lock:
        if not _rescanner:
            settings = settings_of(app)
            _rescanner.append(
                rescan.Rescanner(
                    settings=settings,
                    db=store.pool(
                        settings.database.url,
                        min_size=1,
                        max_size=2,
                        password=config.database_password(settings.database),
                    ),
                    redis=dedupe.client(
                        settings.broker.url,
                        password=config.broker_password(settings.broker),
                        tls=config.redis_tls(settings.broker, settings.broker.url),
                    ),
                    publish=lambda kwargs: run.apply_async(kwargs=kwargs, queue=rescan.QUEUE),
                )
            )
        return _rescanner[0]


@app.task(name=rescan.PLAN_TASK, acks_late=True)
def plan() -> dict[str, Any]:
    """One plan pass (skipped while another runs)."""
    where = rescanner()
    seconds = int(settings_of(app).rescan.plan_interval_seconds * 5) + 1
    lock = where.redis.lock("scanqueue:rescan-plan", timeout=seconds, blocking=False)
    if not lock.acquire():
        return {}
    try:
        planned = rescan.plan(where)
    except errors.ScanqueueError as e:
        log.warning("rescan plan pass stopped: %s", e)
        return {}
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:  # expired while the pass ran: nothing to release
            log.warning("the rescan plan pass outlived its lock")
    metrics.RESCAN_OLDEST_DUE.set(planned.oldest_due_seconds)
    if planned.db_updated_at is not None:
        metrics.RESCAN_DB_UPDATED.set(planned.db_updated_at.timestamp())
    for outcome, count in (("planned", planned.rescans), ("full_scan_asked", planned.full_scans)):
        if count:
            metrics.RESCANS.labels(outcome).inc(count)
    return {"rescans": planned.rescans, "full_scans": planned.full_scans, "due": planned.due}


@app.task(name=rescan.RUN_TASK, bind=True, acks_late=True, max_retries=None)
def run(  # noqa: PLR0917 - the task's kwargs, as published by plan
    self: Task, scan_id: str, digest: str, cluster: str, image: str, failures: int = 0
) -> dict[str, str]:
    """Rescan one digest from its stored SBOM (no cluster, no registry, no credential)."""
    where = rescanner()
    try:
        outcome = rescan.run(where, scan_id=scan_id, digest=digest, cluster=cluster, image=image)
    except errors.TemporaryError as e:
        if failures >= MAX_RETRIES:
            rescan.fail(where, scan_id=scan_id, reason=f"gave up after {failures} retries: {e}")
            metrics.RESCANS.labels("failed").inc()
            return {"outcome": "failed", "detail": str(e)}
        delay = min(300, 2 ** min(failures, 8))
        log.warning("rescan will be retried in %ds: %s", delay, e,
                    extra={"scan_id": scan_id, "digest": digest})  # fmt: skip
        kwargs = {"scan_id": scan_id, "digest": digest, "cluster": cluster, "image": image,
                  "failures": failures + 1}  # fmt: skip
        raise self.retry(kwargs=kwargs, countdown=delay) from None
    except errors.PermanentError as e:
        rescan.fail(where, scan_id=scan_id, reason=str(e))
        metrics.RESCANS.labels("failed").inc()
        return {"outcome": "failed", "detail": str(e)}
    metrics.RESCANS.labels(outcome).inc()
    return {"outcome": outcome, "scan_id": scan_id}


def _schedule() -> dict[str, dict[str, Any]]:
    settings = settings_of(app).rescan
    if not settings.enabled:
        return {}
    return {
        "rescan-plan": {
            "task": rescan.PLAN_TASK,
            "schedule": settings.plan_interval_seconds,
            "options": {"queue": rescan.QUEUE, "expires": settings.plan_interval_seconds * 2},
        }
    }


app.conf.beat_schedule = {**(app.conf.beat_schedule or {}), **_schedule()}
