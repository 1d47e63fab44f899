"""The Celery tasks: thin wrappers around ``scanqueue.scans``.

- ``scanqueue.scan`` (published by the watcher on ``scan.<cluster>``): submit
  the scan Job of one image digest. Late-acked and idempotent.
- ``scanqueue.collect_job`` (the watcher's Job watch, per finished Job): collect
  that Job; each Job is claimed once, so collects run in parallel across workers.
  The waiting scans whose slots it freed it then submits itself (no scan task each).
- ``scanqueue.collect`` (beat, per cluster): store finished scans, clean up, start
  waiting scans if slots are free: the safety net. A Redis lock keeps one pass
  per cluster at a time.
- ``scanqueue.sweep`` (beat, per cluster): delete what outlived its deadline,
  fail scans whose Job vanished, prune old scans.
- ``scanqueue.prune`` (beat, daily, control queue): delete inventory rows of
  containers gone longer than ``database.retain_gone_days``, and prune the alert
  ledger (``store.prune``).

Collaborators (API client, Postgres pool, Redis, registry client) are built
lazily once per worker process and cluster: after the prefork pool forked.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from typing import Any

import redis.exceptions
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from scanqueue import (
    config,
    dedupe,
    discovery,
    errors,
    images,
    kube,
    metrics,
    publish,
    registry,
    scans,
    status,
    store,
)
from workers.app import CONTROL_QUEUE, app, queue_name, settings_of

log = logging.getLogger(__name__)

MAX_TEMPORARY_RETRIES = 8  # then the scan fails with the last reason
STARTED_GRACE_SECONDS = 60.0  # a waiting scan started this long ago without its task: again
NEWER_PAYLOAD_DELAY_SECONDS = 60  # a payload of a newer release waits this long for its worker
NEWER_PAYLOAD_RETRIES = 60  # ...this many times (an hour), then it is dropped with a log line
_contexts: dict[str, scans.ScanContext] = {}
_contexts_lock = threading.Lock()


class CountingRegistryClient(registry.Client):
    """A registry client that counts the refusals it hears, per cluster and registry host."""

    def __init__(self, *, cluster: str, settings: Any) -> None:
        super().__init__(settings=settings)
        self.cluster = cluster

    def _count(self, image: images.Reference, refusals: Any) -> None:
        refused = sum(1 for r in refusals if not r.temporary)
        if refused:
            metrics.REGISTRY_REFUSALS.labels(self.cluster, image.registry).inc(refused)

    def resolve(self, image: images.Reference, candidates: Any) -> registry.Resolution:
        try:
            found = super().resolve(image, candidates)
        except (registry.NoCredentialAccepted, registry.RegistryUnavailable) as e:
            self._count(image, e.refusals)
            raise
        self._count(image, found.refusals)
        return found


def _record(cluster: str, results: list[scans.Result]) -> None:
    """Scans by outcome; the duration of those that ended (as the step that ended them
    reported it, else from the scan row's times)."""
    ended = [r for r in results if r.outcome in ("succeeded", "failed", "timeout", "refused")]
    for result in results:
        metrics.SCANS.labels(cluster, result.outcome).inc()
    durations: list[float | None] = [r.seconds for r in ended if r.seconds is not None]
    unknown = [r for r in ended if r.seconds is None]
    if unknown:
        with scan_context(cluster).db.connection() as conn:
            durations += [store.scan_seconds(conn, r.scan_id) for r in unknown]
    for seconds in durations:
        if seconds is not None:
            metrics.SCAN_DURATION.labels(cluster).observe(max(0.0, seconds))


def scan_context(cluster: str) -> scans.ScanContext:
    """The collaborators for ``cluster`` in this process (built on first use)."""
    with _contexts_lock:
        found = _contexts.get(cluster)
        if found is None:
            settings = settings_of(app)
            cluster_settings = settings.cluster(cluster)
            registry_client = (
                CountingRegistryClient(cluster=cluster, settings=settings.scan)
                if settings.scan.verify_with_registry
                else None
            )
            found = scans.ScanContext(
                settings=settings,
                cluster=cluster_settings,
                api=kube.api_client(cluster_settings),
                db=store.pool(
                    settings.database.url,
                    min_size=settings.database.pool_min_size,
                    max_size=settings.database.pool_max_size,
                    password=config.database_password(settings.database),
                ),
                redis=dedupe.client(
                    settings.broker.url,
                    password=config.broker_password(settings.broker),
                    tls=config.redis_tls(settings.broker, settings.broker.url),
                ),
                registry=registry_client,
                publish=_publisher(cluster),
            )
            _contexts[cluster] = found
        return found


class _StartHere(threading.local):
    """Waiting scans that the running collect task freed slots for: it submits them itself
    once its Job is handled, instead of sending a scan task each (a message less per waiting
    scan, and no queue between a freed slot and the next Job). None: not in such a task."""

    payloads: list[dict[str, Any]] | None = None


_start_here = _StartHere()
MAX_STARTED_HERE = 16  # waiting scans one collect task submits itself; more are sent as tasks


def _publisher(cluster: str) -> Any:
    """Sends a scan task for ``cluster`` (a waiting scan whose slot was freed), or, inside a
    collect task, leaves it to that task (``_start_waiting_here``)."""

    def publish(kwargs: dict[str, Any]) -> None:
        here = _start_here.payloads
        if here is not None and len(here) < MAX_STARTED_HERE:
            here.append(kwargs)
            return
        _send_scan(cluster, kwargs)

    return publish


def _send_scan(cluster: str, kwargs: dict[str, Any]) -> None:
    """Send the scan task of ``kwargs``, shown by its digest and pod (``scan_shown``)."""
    shown = publish.scan_shown(kwargs["request"])
    scan.apply_async(kwargs=kwargs, queue=queue_name(cluster), argsrepr="()", kwargsrepr=shown)


def _start_waiting_here(cluster: str, payloads: list[dict[str, Any]]) -> None:
    """Submit the waiting scans whose slots this task freed (each holds its slot's reservation).

    Whatever goes wrong with one (a temporary failure, bad input) is left to its scan task,
    sent then, with the task's retries and failure handling; a worker dying here leaves the
    scans to the periodic pass, which sends their tasks again (``pending.restart_stale``).
    """
    while payloads:
        kwargs = payloads.pop(0)
        try:
            request = discovery.from_payload(kwargs["request"])
            where = scan_context(cluster)
            result = scans.submit(where, request)
        except Exception as e:  # the scan task handles it, as if it had been sent at once
            log.info("waiting scan sent as a task (%s: %s)", type(e).__name__, e,
                     extra={"cluster": cluster})  # fmt: skip
            try:
                _send_scan(cluster, kwargs)
            except Exception as lost:  # the periodic pass sends it again
                log.warning("waiting scan left to the periodic pass: %s", lost,
                            extra={"cluster": cluster})  # fmt: skip
            continue
        _record(cluster, [result])


def _backoff(retries: int, delay: float | None) -> float:
    if delay is not None:
        return delay
    return float(min(300, 2 ** min(retries, 8)) * (0.5 + random.random()))


@app.task(
    name="scanqueue.scan",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,  # retries are bounded below, by kind; Celery's default (3) would drop
)
def scan(self: Task, request: dict[str, Any], failures: int = 0) -> dict[str, str]:
    """Submit the scan Job for one request payload (references only; never a secret).

    ``failures`` counts the temporary failures so far (API, registry, database): after
    ``MAX_TEMPORARY_RETRIES`` the scan ends failed with the last reason. A scan whose
    cluster is at ``max_inflight`` is parked (outcome ``waiting``), not retried: the
    task returns, and the scan's task is sent again once, when a slot is freed.
    """
    try:
        parsed = discovery.from_payload(request)
    except discovery.NewerPayload as e:
        # a newer watcher published it; a worker of that release can run it: put it back
        if failures >= NEWER_PAYLOAD_RETRIES:
            log.error("scan request of a newer release dropped after %d tries: %s", failures, e)
            return {"outcome": "failed", "detail": str(e)}
        log.warning("scan request requeued: %s", e)
        raise self.retry(
            kwargs={"request": request, "failures": failures + 1},
            countdown=NEWER_PAYLOAD_DELAY_SECONDS,
        ) from None
    except errors.PermanentError as e:
        log.error("unreadable scan request dropped: %s", e)
        return {"outcome": "failed", "detail": str(e)}

    def again(countdown: float, failed: int) -> Exception:
        return self.retry(kwargs={"request": request, "failures": failed}, countdown=countdown)  # type: ignore[no-any-return]

    try:
        where = scan_context(parsed.cluster)
        status.count_scan_task(where.redis, cluster=parsed.cluster)
        result = scans.submit(where, parsed)
    except errors.ConfigError as e:
        # a cluster this worker's settings do not know: nothing to record it in
        log.error("scan request for an unknown cluster dropped: %s", e,
                  extra={"scan_id": parsed.scan_id, "cluster": parsed.cluster})  # fmt: skip
        return {"outcome": "failed", "detail": str(e)}
    except errors.TemporaryError as e:
        if failures >= MAX_TEMPORARY_RETRIES:
            return _fail(self, parsed, f"gave up after {failures} retries: {e}", again, failures)
        delay = _backoff(failures, e.delay)
        log.warning(
            "scan submit will be retried in %.1fs (retry %d): %s",
            delay,
            failures + 1,
            e,
            extra={"scan_id": parsed.scan_id, "cluster": parsed.cluster},
        )
        raise again(delay, failures + 1) from None
    except errors.PermanentError as e:
        return _fail(self, parsed, str(e), again, failures)
    except SoftTimeLimitExceeded:
        # late ack + idempotent submit: the next delivery picks up where this one stopped
        raise again(5, failures + 1) from None
    _record(parsed.cluster, [result])
    return result.as_dict()


def _fail(
    task: Task,
    request: discovery.ScanRequest,
    reason: str,
    again: Any,
    failures: int,
) -> dict[str, str]:
    """End the scan failed with ``reason``; if even that cannot be recorded now, retry later."""
    try:
        result = scans.fail(scan_context(request.cluster), request, reason=reason)
    except errors.TemporaryError as e:
        delay = _backoff(failures, e.delay)
        log.warning("recording a failed scan will be retried in %.1fs: %s", delay, e,
                    extra={"scan_id": request.scan_id, "cluster": request.cluster})  # fmt: skip
        raise again(delay, failures) from None
    _record(request.cluster, [result])
    return result.as_dict()


def _locked(cluster: str, what: str, seconds: int) -> Any:
    return scan_context(cluster).redis.lock(
        f"scanqueue:{what}:{cluster}", timeout=seconds, blocking=False
    )


def _release(lock: Any) -> None:
    """Release a pass lock; one that expired while the pass ran (a slow database) is gone."""
    try:
        lock.release()
    except redis.exceptions.LockError:
        log.warning("a pass outlived its lock %s; it had expired already", lock.name)


@app.task(name="scanqueue.collect", acks_late=True)
def collect(cluster: str) -> list[dict[str, str]]:
    """Collect finished scan Jobs of ``cluster`` (one pass; skipped if another runs)."""
    lock = _locked(cluster, "collect", settings_of(app).scan.soft_time_limit_seconds)
    if not lock.acquire():
        return []
    try:
        where = scan_context(cluster)
        results = scans.collect(where)
        status.record(where.redis, cluster=cluster, what="collect", now=where.clock().timestamp())
        # the safety net: slots freed without a start (a worker died in between) start here
        scans.start_waiting(where, stale_after=STARTED_GRACE_SECONDS)
        _record(cluster, results)
        _jobs_in_flight(cluster)
        return [r.as_dict() for r in results]
    except errors.TemporaryError as e:
        log.warning("collect pass of %s stopped: %s", cluster, e, extra={"cluster": cluster})
        return []
    finally:
        _release(lock)


@app.task(name="scanqueue.collect_job", acks_late=True)
def collect_job(cluster: str, job: str, summary: dict[str, Any] | None = None) -> dict[str, str]:
    """Collect one finished scan Job (sent by the watcher's Job watch); claimed once."""
    where = scan_context(cluster)
    started: list[dict[str, Any]] = []
    _start_here.payloads = started
    try:
        status.count_task(where.redis, cluster=cluster, what="collect_tasks")
        result = scans.collect_job(where, job, summary)
    except errors.TemporaryError as e:
        log.warning("collect of %s stopped: %s; the periodic pass collects it", job, e,
                    extra={"cluster": cluster, "job": job})  # fmt: skip
        return {}
    finally:
        _start_here.payloads = None
        _start_waiting_here(cluster, started)
    if result is None:
        return {}
    _record(cluster, [result])
    return result.as_dict()


def _jobs_in_flight(cluster: str) -> None:
    """Scan Jobs holding an in-flight slot in ``cluster`` (what max_inflight counts)."""
    count = dedupe.jobs_in_flight(scan_context(cluster).redis, cluster=cluster)
    metrics.JOBS_IN_FLIGHT.labels(cluster).set(count)


@app.task(name="scanqueue.sweep", acks_late=True)
def sweep(cluster: str) -> dict[str, int]:
    """Delete leftovers of ``cluster`` and fail scans that lost their Job."""
    lock = _locked(cluster, "sweep", settings_of(app).scan.soft_time_limit_seconds)
    if not lock.acquire():
        return {}
    try:
        where = scan_context(cluster)
        swept = scans.sweep(where)
        status.record(where.redis, cluster=cluster, what="sweep", now=where.clock().timestamp())
        return {
            "jobs": swept.jobs,
            "secrets": swept.secrets,
            "scans_failed": swept.scans_failed,
            "scans_pruned": swept.scans_pruned,
        }
    except errors.TemporaryError as e:
        log.warning("sweep of %s stopped: %s", cluster, e, extra={"cluster": cluster})
        return {}
    finally:
        _release(lock)


def _schedule() -> dict[str, dict[str, Any]]:
    settings = settings_of(app)
    schedule: dict[str, dict[str, Any]] = {}
    for cluster in settings.clusters:
        options = {
            "queue": queue_name(cluster.name),
            "expires": settings.scan.sweep_interval_seconds,
        }
        schedule[f"collect-{cluster.name}"] = {
            "task": "scanqueue.collect",
            "schedule": settings.scan.collect_interval_seconds,
            "args": (cluster.name,),
            "options": {**options, "expires": settings.scan.collect_interval_seconds * 2},
        }
        schedule[f"sweep-{cluster.name}"] = {
            "task": "scanqueue.sweep",
            "schedule": settings.scan.sweep_interval_seconds,
            "args": (cluster.name,),
            "options": options,
        }
    schedule["prune"] = {  # the alert ledger too, whatever database.retain_gone_days says
        "task": "scanqueue.prune",
        "schedule": PRUNE_INTERVAL_SECONDS,
        "options": {"queue": CONTROL_QUEUE, "expires": PRUNE_INTERVAL_SECONDS},
    }
    return schedule


PRUNE_INTERVAL_SECONDS = 86400.0  # containers gone for days: once a day is enough


@app.task(name="scanqueue.prune", queue=CONTROL_QUEUE)
def prune() -> dict[str, int]:
    """``scanqueue prune``, daily: containers gone longer than ``database.retain_gone_days``
    and the alert ledger (``store.prune``)."""
    from datetime import UTC, datetime

    settings = settings_of(app)
    try:
        with store.connect(
            settings.database.url, password=config.database_password(settings.database)
        ) as conn:
            pruned = store.prune(
                conn,
                now=datetime.now(UTC),
                retain_gone_days=settings.database.retain_gone_days,
                keep_sent_days=settings.alerts.keep_sent_days,
                keep_dead_days=settings.alerts.keep_dead_days,
            )
    except errors.TemporaryError as e:
        log.warning("prune stopped (tried again tomorrow): %s", e)
        return {}
    counts = dataclasses.asdict(pruned)
    log.info("pruned %s", ", ".join(f"{n} {what}" for what, n in counts.items()))
    return counts


app.conf.beat_schedule = _schedule()
