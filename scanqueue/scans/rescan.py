"""Rescans from stored SBOMs: keep a digest's package list, plan due digests, run ``trivy sbom``.

Why it exists: a digest's content never changes; only the advisories do. The
first full scan of a digest keeps its package list (``keep_sbom``, called by
the collect step); from then on ``plan`` (beat, on the ``scanqueue.rescan``
queue) finds the running digests that are due, because their last evaluation
is older than ``rescan.interval_seconds`` or the vulnerability DB is newer
than the one it used, and ``run`` evaluates each one in the worker against
the farm's Trivy server (or a local DB). A rescan is a scan row of mode
``sbom`` stored through the same ingest, so views and reports need no case.

What it must never do: touch a cluster, a registry or a credential (a
``Rescanner`` has no API client, no registry client, no Secret); store an
empty result for a package list it could not read (that ends as a failed
row with the reason, and the digest gets a full scan); fail a full scan
because its SBOM could not be kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from scanqueue import config, dedupe, errors, images, reports, sboms, store, trivy
from scanqueue.store import sboms as stored_sboms

log = logging.getLogger(__name__)

QUEUE = "scanqueue.rescan"  # not tied to a cluster: any worker with trivy can serve it
RUN_TASK = "scanqueue.rescan.run"
PLAN_TASK = "scanqueue.rescan.plan"
_SOURCE_NAME = "sbom.cdx.json"  # the file name Trivy reads; its targets are renamed after


@dataclasses.dataclass
class Rescanner:
    """What rescans need, built once per worker process: no cluster, no registry."""

    settings: config.Settings
    db: Any  # psycopg_pool.ConnectionPool from store.pool
    redis: redis.Redis
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    # Sends one rescan task with these kwargs on QUEUE. None: plan starts nothing.
    publish: Callable[[dict[str, Any]], None] | None = None


@dataclasses.dataclass(frozen=True)
class Planned:
    """What one plan pass did."""

    db_updated_at: datetime | None
    rescans: int  # rescan tasks published
    full_scans: int  # digests asked for a full scan
    due: int  # due digests seen (before the rate limit)
    oldest_due_seconds: float  # age of the oldest due digest's last evaluation; 0 = none


def runner(settings: config.RescanSettings) -> trivy.Runner:
    """How this farm runs Trivy for SBOMs and rescans; ``ConfigError`` without a binary."""
    token = config.read_password_file(
        settings.trivy_server_token_file, "rescan.trivy_server_token_file"
    )
    return trivy.Runner(
        binary=trivy.find_binary(settings.trivy_binary),
        server=settings.trivy_server,
        cache_dir=settings.cache_dir,
        token=token,
        timeout_seconds=settings.timeout_seconds,
    )


def keep_sbom(
    *, settings: config.Settings, db: Any, scan_id: str, digest: str, text: str | bytes
) -> bool:
    """After a successful full scan: keep the digest's package list as CycloneDX, once.

    ``text``: the report (the pod log's bytes are decoded here, only when rescans are on).

    Never raises for a scan's sake: a list that cannot be kept (no packages
    listed, no trivy binary, the database away) is logged; the digest then gets
    full scans, as without rescans. Returns whether an SBOM is stored now.
    """
    if not settings.rescan.enabled or not digest:
        return False
    where = {"scan_id": scan_id, "digest": digest}
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        why = sboms.listed_packages(json.loads(text.lstrip("\ufeff")))
        packed = None
        if why is None:
            packed = sboms.pack(trivy.to_cyclonedx(runner(settings.rescan), text))
        with db.connection() as conn:
            if packed is None:
                stored_sboms.full_scan_done(conn, digest=digest, scan_id=scan_id)
                log.info("no SBOM kept: %s", why, extra=where)
                return False
            kept = stored_sboms.keep(conn, digest=digest, scan_id=scan_id, packed=packed,
                                     scanner_version=_scanner_version(text))  # fmt: skip
    except (errors.ScanqueueError, ValueError) as e:
        log.warning("SBOM of the scan not kept (the digest gets full scans): %s", e, extra=where)
        return False
    if kept:
        log.info("SBOM kept", extra={**where, "packages": packed.packages,
                                     "bytes": len(packed.document)})  # fmt: skip
    return True


def _scanner_version(text: str) -> str | None:
    try:
        return str(json.loads(text.lstrip("\ufeff"))["Trivy"]["Version"])
    except (ValueError, KeyError, TypeError):
        return None


def plan(r: Rescanner) -> Planned:
    """One plan pass: observe the DB, pick the due running digests (oldest first, at most
    ``rescan.max_per_plan``), publish a rescan for those with a usable SBOM and ask a full
    scan for the others. Raises ``TemporaryError`` when the DB version cannot be read."""
    settings = r.settings.rescan
    now = r.clock()
    version = trivy.db_version(runner(settings))
    lost = lost_before(r.settings, now)
    with r.db.connection() as conn:
        stored_sboms.observe_db(
            conn,
            updated_at=version.updated_at,
            trivy_version=version.trivy_version,
            source=version.source,
            at=now,
        )
        stored_sboms.end_lost_rescans(conn, started_before=lost, at=now)
        rows = stored_sboms.evaluations(conn, busy_since=lost)
        in_flight = stored_sboms.rescans_in_flight(conn, since=lost)
    due = []
    for candidate, busy in rows:
        decision = sboms.decide(
            candidate.evaluation,
            now=now,
            interval_seconds=settings.interval_seconds,
            db_updated_at=version.updated_at,
            min_trivy_version=settings.min_trivy_version,
        )
        if decision.due and not busy:
            due.append((candidate, decision))
    oldest = max((_age(now, c) for c, _ in due), default=0.0)
    rescans = full = 0
    # a digest already asked for a full scan waits for the watcher: it costs no budget;
    # rescans still queued or running do: the queue never holds more than max_per_plan
    # (workers slower than the plan rate would otherwise grow it pass after pass)
    waiting = [(c, d) for c, d in due if c.evaluation.full_scan_wanted is None]
    for candidate, decision in waiting[: max(0, settings.max_per_plan - in_flight)]:
        if decision.next == "sbom":
            rescans += _start(r, candidate, now)
        else:
            _want_full_scan(r, candidate.digest, decision.why)
            full += 1
    return Planned(version.updated_at, rescans, full, len(due), oldest)


def lost_before(settings: config.Settings, now: datetime) -> datetime:
    """A rescan queued or running since before this counts as lost (its worker died): the
    planner, and the sweep when rescans were turned off, end its row failed."""
    busy_for = max(settings.rescan.timeout_seconds * 3, settings.scan.job_deadline_seconds)
    return now - timedelta(seconds=busy_for)


def _age(now: datetime, candidate: stored_sboms.Due) -> float:
    finished = candidate.evaluation.finished_at
    return 0.0 if finished is None else max(0.0, (now - finished).total_seconds())


def _start(r: Rescanner, candidate: stored_sboms.Due, now: datetime) -> int:
    if r.publish is None:
        return 0
    scan_id = "sbom-" + dedupe.new_scan_id()
    with r.db.connection() as conn:
        store.start_scan(conn, scan_id=scan_id, cluster=candidate.cluster,
                         digest=candidate.digest, image=candidate.image, mode="sbom", attempt=1,
                         credential_source=None, started_at=now)  # fmt: skip
    r.publish({"scan_id": scan_id, "digest": candidate.digest, "cluster": candidate.cluster,
               "image": candidate.image})  # fmt: skip
    return 1


def _want_full_scan(r: Rescanner, digest: str, why: str) -> None:
    with r.db.connection() as conn:
        stored_sboms.want_full_scan(conn, digest=digest, reason=why)
    dedupe.forget_fresh(r.redis, digest)
    log.info("full scan asked for: %s", why, extra={"digest": digest})


def run(r: Rescanner, *, scan_id: str, digest: str, cluster: str, image: str) -> str:
    """Evaluate ``digest``'s stored SBOM against the current DB, as scan ``scan_id``.

    Returns the outcome: ``succeeded``, ``no_sbom`` or ``unreadable_sbom`` (both
    end the row failed with the reason and ask for a full scan), ``failed``
    (Trivy's output unusable; planned again), ``already_ended`` (a late or
    repeated delivery: the row succeeded already, or the planner ended it as
    lost and planned the digest again; nothing is run). Raises
    ``TemporaryError`` for what may pass (Trivy server away, database away):
    the task retries.
    """
    settings = r.settings.rescan
    with r.db.connection() as conn:
        store.start_scan(conn, scan_id=scan_id, cluster=cluster, digest=digest, image=image,
                         mode="sbom", attempt=1, credential_source=None,
                         started_at=r.clock())  # fmt: skip
        # still to run? then it counts as started now: the planner's lost-rescan window
        # (3 x timeout) runs from here, longer than this run takes, not from the plan pass
        if not stored_sboms.begin_rescan(conn, scan_id=scan_id, at=r.clock()):
            log.info("rescan already ended; not run again",
                     extra={"scan_id": scan_id, "digest": digest})  # fmt: skip
            return "already_ended"
        stored = stored_sboms.get(conn, digest)
    if stored is None:
        return _fall_back(r, scan_id, digest, "no stored SBOM", "no_sbom")
    try:
        document = sboms.unpack(stored.document, digest=digest)
        trivy_runner = runner(settings)
        version = trivy.db_version(trivy_runner)
        with _alone(r, document, trivy_runner.timeout_seconds):
            text = trivy.scan_sbom(trivy_runner, document, name=_SOURCE_NAME)
    except (sboms.UnusableSbom, trivy.UnreadableSbom) as e:
        return _fall_back(r, scan_id, digest, str(e), "unreadable_sbom")
    text = sboms.rewrite_report(text, source_name=_SOURCE_NAME, image=_target(image, digest))
    try:
        report = reports.parse(text, source=f"trivy sbom of {digest}")
    except reports.InvalidReport as e:
        _fail(r, scan_id, str(e))
        return "failed"
    with r.db.connection() as conn:
        store.finish_scan(conn, scan_id=scan_id, report=report, finished_at=r.clock())
        stored_sboms.record_evaluation(conn, scan_id=scan_id, db_updated_at=version.updated_at)
    dedupe.mark_many_fresh(r.redis, [digest], ttl_seconds=r.settings.scan.rescan_interval_seconds)
    log.info("rescan stored", extra={"scan_id": scan_id, "digest": digest,
                                     "findings": len(report.findings)})  # fmt: skip
    return "succeeded"


@contextlib.contextmanager
def _alone(r: Rescanner, document: bytes, timeout: float) -> Iterator[None]:
    """Run one ``trivy sbom`` of this exact document at a time, farm-wide.

    A Trivy server keys the uploaded SBOM by its content and deletes it when
    that scan ends: two digests with identical package lists rescanned at once
    make one of them fail with "layer cache missing" (seen at 2 at once).
    """
    key = "scanqueue:rescan-sbom:" + hashlib.sha256(document).hexdigest()
    lock = r.redis.lock(key, timeout=timeout + 30, blocking_timeout=timeout)
    try:
        acquired = lock.acquire()
    except redis.RedisError as e:
        raise errors.TemporaryError(f"Redis, taking the rescan lock: {e}") from None
    if not acquired:
        raise errors.TemporaryError("an identical SBOM is being rescanned; retried")
    try:
        yield
    finally:
        with contextlib.suppress(redis.RedisError):
            lock.release()


def _target(image: str, digest: str) -> str:
    """``REPOSITORY@DIGEST``, as a scan Job names its target (its findings' targets say so)."""
    try:
        return f"{images.parse(image).name}@{digest}"
    except images.InvalidReference:
        return image


def _fail(r: Rescanner, scan_id: str, reason: str) -> None:
    with r.db.connection() as conn:
        store.fail_scan(conn, scan_id=scan_id, status="failed", reason=reason,
                        finished_at=r.clock())  # fmt: skip


def _fall_back(r: Rescanner, scan_id: str, digest: str, why: str, outcome: str) -> str:
    _fail(r, scan_id, f"{why}; the digest gets a full scan instead")
    _want_full_scan(r, digest, why)
    log.warning("rescan impossible, full scan asked: %s", why,
                extra={"scan_id": scan_id, "digest": digest})  # fmt: skip
    return outcome


def fail(r: Rescanner, *, scan_id: str, reason: str) -> None:
    """End rescan ``scan_id`` failed with ``reason`` (retries exhausted); planned again."""
    _fail(r, scan_id, reason)
