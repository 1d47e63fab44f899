"""Rescan planning at a realistic size: a DB update with 1,200 running digests that have SBOMs.

The digests' rows (images, succeeded full scans, SBOMs, running containers) are seeded
with SQL; the SBOM is the one a real full scan kept. Every planned rescan of a small
sample runs the real ``trivy sbom`` against the real Trivy server; the others are
completed through the store as the worker's ingest would (1,200 real Trivy runs take
minutes). What is checked is the planner: each pass starts at most ``max_per_plan``
rescans, minus those still queued or running; every digest is rescanned once for the new
DB; a task delivered late (its row ended as lost and planned again) runs nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from scanqueue import errors, reports, sboms, store, trivy
from scanqueue.scans import rescan
from scanqueue.sim import trivydb
from scanqueue.store import sboms as stored_sboms
from tests.integration import test_rescans
from tests.support import trivy_fixtures

RUNNING = 1200  # running digests with an SBOM
LIMIT = 200  # rescan.max_per_plan (its default)
REAL = 3  # rescans per pass run with the real Trivy
OLD_DB = datetime(2026, 1, 1, tzinfo=UTC)  # the fixtures' DB
NEW_DB = "2026-06-01T00:00:00Z"


@pytest.fixture
def world(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[test_rescans.World]:
    handle = test_rescans.World(tmp_path, database_url, redis_url)
    try:
        settings = handle.settings
        handle.rescanner.settings = dataclasses.replace(
            settings,
            rescan=dataclasses.replace(settings.rescan, interval_seconds=86400,
                                       max_per_plan=LIMIT),
        )  # fmt: skip
        yield handle
    finally:
        handle.close()


def _seed(world: test_rescans.World) -> list[str]:
    """RUNNING digests evaluated an hour or more ago against the old DB, each with the SBOM
    of a real full scan, each running in a pod. Returns them, oldest evaluation first."""
    world.full_scan()
    others = [f"sha256:{i:064x}" for i in range(1, RUNNING)]
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO images (digest, registry, repository)
               SELECT d, 'registry.test', 'team/app' FROM unnest(%s::text[]) AS d""",
            (others,),
        )
        conn.execute(
            """INSERT INTO scans (id, digest, cluster_id, image, status, mode, attempt,
                                  started_at, finished_at, db_updated_at)
               SELECT 'full-' || d, d, (SELECT id FROM clusters WHERE name = 'eu'),
                      'registry.test/team/app@' || d, 'succeeded', 'registry', 1,
                      now() - interval '3 hours' + n * interval '1 second',
                      now() - interval '2 hours' + n * interval '1 second', %s
                 FROM unnest(%s::text[]) WITH ORDINALITY AS t(d, n)""",
            (OLD_DB, others),
        )
        conn.execute("UPDATE scans SET db_updated_at = %s WHERE id = 'full-1'", (OLD_DB,))
        conn.execute(
            """INSERT INTO sboms (digest, format, compression, document, size_bytes, packages,
                                  scanner_version, scan_id)
               SELECT d, format, compression, document, size_bytes, packages, scanner_version,
                      'full-' || d FROM sboms, unnest(%s::text[]) AS d""",
            (others,),
        )
        digests = [*others, test_rescans.DIGEST]  # full-1 finished 4 minutes ago: newest
        store.record_containers(
            conn, [test_rescans._running(d, pod=f"p{i}") for i, d in enumerate(digests)]
        )
    return digests


def _new_db(world: test_rescans.World) -> None:
    advisories = trivydb.load(trivy_fixtures.ADVISORIES).plus(test_rescans.ADDED)
    world.set_db(trivydb.AdvisoryFile(advisories.advisories, updated_at=NEW_DB))


def _complete(world: test_rescans.World, task: dict[str, str], report: reports.Report) -> None:
    """What the worker stores for a rescan, without running Trivy again."""
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        store.finish_scan(conn, scan_id=task["scan_id"], report=report,
                          finished_at=world.rescanner.clock())  # fmt: skip
        stored_sboms.record_evaluation(conn, scan_id=task["scan_id"],
                                       db_updated_at=datetime.fromisoformat(NEW_DB))  # fmt: skip


def _work_off(
    world: test_rescans.World,
    batch: list[dict[str, str]],
    report: reports.Report,
    rescanned: collections.Counter[str],
) -> None:
    """Run a pass's rescans: the first REAL with the real Trivy, the others completed."""
    for i, task in enumerate(batch):
        rescanned[task["digest"]] += 1
        if i < REAL:
            assert rescan.run(world.rescanner, **task) == "succeeded"
        else:
            _complete(world, task, report)


def _in_flight(world: test_rescans.World) -> int:
    [(count,)] = world.query(
        "SELECT count(*) FROM scans WHERE mode = 'sbom' AND status IN ('pending', 'running')"
    )
    return int(str(count))


def test_a_db_update_over_1200_running_digests_is_rescanned_200_a_pass_each_once(
    world: test_rescans.World,
) -> None:
    digests = _seed(world)
    quiet = rescan.plan(world.rescanner)
    assert (quiet.rescans, quiet.due) == (0, 0)  # the same DB, evaluated an hour ago
    _new_db(world)
    report = _rescan_report(world)
    rescanned: collections.Counter[str] = collections.Counter()
    passes = []
    while True:
        before = len(world.published)
        planned = rescan.plan(world.rescanner)
        batch = world.published[before:]
        assert planned.rescans == len(batch) <= LIMIT
        assert _in_flight(world) <= LIMIT
        passes.append((planned.due, len(batch)))
        if not batch:
            break
        if len(passes) == 1:  # oldest evaluation first
            assert [t["digest"] for t in batch] == digests[:LIMIT]
        _work_off(world, batch, report, rescanned)
    assert len(passes) == math.ceil(RUNNING / LIMIT) + 1, passes
    assert [due for due, _ in passes] == [RUNNING - LIMIT * i for i in range(len(passes))]
    assert set(rescanned) == set(digests)
    assert max(rescanned.values()) == 1  # none twice for the same DB
    [(count,)] = world.query(
        "SELECT count(*) FROM scans WHERE mode = 'sbom' AND status = 'succeeded' "
        "AND db_updated_at = %s",
        datetime.fromisoformat(NEW_DB),
    )
    assert count == RUNNING
    # every evaluation has the new advisory, the real rescans' too
    found = world.query(
        """SELECT count(DISTINCT s.id) FROM scans s JOIN findings f ON f.scan_id = s.id
            WHERE s.mode = 'sbom' AND f.vulnerability_id = 'CVE-2099-2999'"""
    )
    assert found == [(RUNNING,)]


def _rescan_report(world: test_rescans.World) -> reports.Report:
    """The report a rescan of the seeded SBOM stores, from the real ``trivy sbom``."""
    with psycopg.connect(world.database_url) as conn:
        kept = stored_sboms.get(conn, test_rescans.DIGEST)
    assert kept is not None
    document = sboms.unpack(kept.document, digest=test_rescans.DIGEST)
    text = trivy.scan_sbom(rescan.runner(world.settings.rescan), document)
    return reports.parse(text)


def test_rescan_workers_slower_than_the_plan_rate_never_queue_more_nor_rescan_twice(
    world: test_rescans.World,
) -> None:
    """Workers that take 50 rescans a pass while the planner may start 200: the queue never
    holds more than max_per_plan; rescans still queued when the planner counts them lost
    are planned again, and their late delivery runs nothing, so no digest is evaluated
    twice against one DB."""
    digests = _seed(world)
    _new_db(world)
    report = _rescan_report(world)
    shift = [timedelta(0)]
    world.rescanner.clock = lambda: datetime.now(UTC) + shift[0]

    first = rescan.plan(world.rescanner)
    assert first.rescans == LIMIT
    queued = list(world.published)
    for task in queued[:50]:  # the workers get through 50
        _complete(world, task, report)
    second = rescan.plan(world.rescanner)
    assert second.rescans == 50  # 150 still queued: room for 50 only
    assert _in_flight(world) == LIMIT
    queued = queued[50:] + world.published[LIMIT:]
    assert rescan.plan(world.rescanner).rescans == 0

    # past the rescans' busy window the planner counts the 200 queued ones lost
    shift[0] = timedelta(seconds=world.settings.scan.job_deadline_seconds + 60)
    before = len(world.published)
    third = rescan.plan(world.rescanner)
    assert third.rescans == LIMIT
    assert {t["digest"] for t in world.published[before:]} == {t["digest"] for t in queued}
    for i, late in enumerate(queued):  # their tasks arrive at last: nothing runs
        assert rescan.run(world.rescanner, **late) == "already_ended", i
    ended = world.query(
        "SELECT DISTINCT status, error FROM scans WHERE id = ANY(%s)",
        [t["scan_id"] for t in queued],
    )
    assert ended == [("failed", "rescan task lost (worker gone?); planned again")]

    rescanned = collections.Counter(t["digest"] for t in world.published[:50])
    batch = world.published[before:]
    while batch:
        _work_off(world, batch, report, rescanned)
        before = len(world.published)
        planned = rescan.plan(world.rescanner)
        assert planned.rescans <= LIMIT and _in_flight(world) <= LIMIT
        batch = world.published[before:]
    assert set(rescanned) == set(digests) and max(rescanned.values()) == 1
    twice = world.query(
        """SELECT digest FROM scans WHERE mode = 'sbom' AND status = 'succeeded'
            GROUP BY digest, db_updated_at HAVING count(*) > 1"""
    )
    assert twice == []


def test_a_rescan_counts_as_lost_from_when_it_starts_not_from_its_plan_pass(
    world: test_rescans.World,
) -> None:
    """A rescan queued for most of the lost window, then started (here its first try fails:
    the Trivy server is away, and the task retries): the next plan pass past the window
    counts the never-started ones lost, not this one, so it is not planned a second time
    while it runs."""
    _seed(world)
    _new_db(world)
    shift = [timedelta(0)]
    world.rescanner.clock = lambda: datetime.now(UTC) + shift[0]
    assert rescan.plan(world.rescanner).rescans == LIMIT
    started, *queued = world.published
    window = datetime.now(UTC) - rescan.lost_before(world.settings, datetime.now(UTC))

    shift[0] = window - timedelta(seconds=10)
    assert world.server is not None
    world.server.stop()
    with pytest.raises(errors.TemporaryError):
        rescan.run(world.rescanner, **started)
    _new_db(world)  # the server is back
    shift[0] = window + timedelta(seconds=10)
    before = len(world.published)
    assert rescan.plan(world.rescanner).rescans == LIMIT - 1  # the started one is in flight
    again = {t["digest"] for t in world.published[before:]}
    assert again == {t["digest"] for t in queued}
    assert world.query("SELECT status FROM scans WHERE id = %s", started["scan_id"]) == [
        ("running",)]  # fmt: skip
    assert rescan.run(world.rescanner, **started) == "succeeded"  # its retry
