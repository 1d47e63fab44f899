"""Scans waiting for an in-flight slot (scanqueue.scans.pending) against a real Redis.

What is checked: the cap is never exceeded, a waiting scan is started once a
slot is freed (its slot reserved so a newcomer cannot take it), namespaces
take turns, a start whose task never arrives is published again by the
safety net and not otherwise, and a scan that ends frees its reservation.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from scanqueue import dedupe, status
from scanqueue.scans import pending

CLUSTER = "c1"
MAX_AGE = 600.0


@pytest.fixture
def conn(redis_url: str) -> Iterator[redis.Redis]:
    client = dedupe.client(redis_url)
    client.flushall()
    yield client
    client.close()


def _take(conn: redis.Redis, scan_id: str, *, ns: str = "team", now: float = 1000.0,
          limit: int = 2) -> bool:  # fmt: skip
    return pending.take_or_park(
        conn, cluster=CLUSTER, job=f"job-{scan_id}", limit=limit, now=now, max_age=MAX_AGE,
        scan_id=scan_id, namespace=ns, payload={"request": {"scan_id": scan_id}},
    )  # fmt: skip


def _start(conn: redis.Redis, *, limit: int = 2, now: float = 1001.0) -> list[str]:
    started = pending.start(conn, cluster=CLUSTER, limit=limit, now=now, max_age=MAX_AGE)
    return [p["request"]["scan_id"] for p in started]


def test_a_full_cluster_parks_scans_and_a_freed_slot_starts_the_first_seen(
    conn: redis.Redis,
) -> None:
    assert _take(conn, "a") and _take(conn, "b")
    assert not _take(conn, "c", now=1000.1)
    assert not _take(conn, "d", now=1000.2)
    assert dedupe.jobs_in_flight(conn, cluster=CLUSTER) == 2
    assert pending.waiting(conn, cluster=CLUSTER) == 2
    assert _start(conn) == []  # still full: nothing starts
    dedupe.free_job_slot(conn, cluster=CLUSTER, job="job-a")
    assert _start(conn) == ["c"]
    assert dedupe.jobs_in_flight(conn, cluster=CLUSTER) == 2  # c's slot is reserved
    assert pending.waiting(conn, cluster=CLUSTER) == 1
    # a newcomer cannot take the reserved slot; c's task turns it into its Job's slot
    assert not _take(conn, "e", now=1002.0)
    assert _take(conn, "c", now=1002.0)
    members = set(conn.zrange(dedupe.jobs_key(CLUSTER), 0, -1))
    assert members == {"job-b", "job-c"}
    assert pending.waiting(conn, cluster=CLUSTER) == 2  # d and e


def test_a_redelivered_scan_task_keeps_its_slot_and_a_parked_one_its_place(
    conn: redis.Redis,
) -> None:
    assert _take(conn, "a", limit=1)
    assert _take(conn, "a", limit=1)  # the same Job: its slot, not a second one
    assert not _take(conn, "b", limit=1, now=1000.0)
    assert not _take(conn, "c", limit=1, now=1000.5)
    assert not _take(conn, "b", limit=1, now=1001.0)  # redelivered: still first in line
    assert pending.waiting(conn, cluster=CLUSTER) == 2
    dedupe.free_job_slot(conn, cluster=CLUSTER, job="job-a")
    assert _start(conn, limit=1) == ["b"]


def test_namespaces_take_turns(conn: redis.Redis) -> None:
    assert _take(conn, "x", limit=1)
    for i, (scan_id, ns) in enumerate([("a1", "big"), ("a2", "big"), ("a3", "big"),
                                       ("b1", "small")]):  # fmt: skip
        assert not _take(conn, scan_id, ns=ns, now=1000.0 + i, limit=1)
    order = []
    for _ in range(4):
        conn.delete(dedupe.jobs_key(CLUSTER))  # the running scan ended
        started = _start(conn, limit=1)
        assert len(started) == 1
        order += started
    assert order == ["a1", "b1", "a2", "a3"]
    assert pending.waiting(conn, cluster=CLUSTER) == 0
    assert _start(conn, limit=5) == []


def test_many_free_slots_start_as_many_scans_and_no_more(conn: redis.Redis) -> None:
    for i in range(5):
        assert _take(conn, f"run{i}", limit=5)
    for i in range(20):
        assert not _take(conn, f"w{i}", ns=f"ns{i % 3}", now=1000.0 + i, limit=5)
    for i in range(3):
        dedupe.free_job_slot(conn, cluster=CLUSTER, job=f"job-run{i}")
    assert len(_start(conn, limit=5)) == 3
    assert dedupe.jobs_in_flight(conn, cluster=CLUSTER) == 5
    assert pending.waiting(conn, cluster=CLUSTER) == 17


def test_a_start_whose_task_never_came_is_published_again_by_the_safety_net_only(
    conn: redis.Redis,
) -> None:
    assert _take(conn, "a", limit=1)
    assert not _take(conn, "b", limit=1)
    dedupe.free_job_slot(conn, cluster=CLUSTER, job="job-a")
    assert _start(conn, limit=1, now=1001.0) == ["b"]
    # not yet stale
    assert pending.restart_stale(conn, cluster=CLUSTER, now=1010.0, older_than=60.0) == []
    again = pending.restart_stale(conn, cluster=CLUSTER, now=1070.0, older_than=60.0)
    assert [p["request"]["scan_id"] for p in again] == ["b"]
    # its reservation was renewed, so the cap still counts it
    assert dedupe.jobs_in_flight(conn, cluster=CLUSTER) == 1
    assert _take(conn, "b", limit=1, now=1071.0)  # the task arrives
    assert pending.restart_stale(conn, cluster=CLUSTER, now=2000.0, older_than=60.0) == []


def test_a_scan_that_ends_before_its_job_gives_back_its_reservation(conn: redis.Redis) -> None:
    assert _take(conn, "a", limit=1)
    assert not _take(conn, "b", limit=1)
    dedupe.free_job_slot(conn, cluster=CLUSTER, job="job-a")
    assert _start(conn, limit=1) == ["b"]
    pending.forget(conn, cluster=CLUSTER, scan_id="b", namespace="team")
    assert dedupe.jobs_in_flight(conn, cluster=CLUSTER) == 0
    assert pending.restart_stale(conn, cluster=CLUSTER, now=5000.0, older_than=1.0) == []


def test_status_reads_queued_waiting_in_flight_and_flags_a_stall(conn: redis.Redis) -> None:
    assert _take(conn, "a", limit=1, now=1000.0)
    assert not _take(conn, "b", limit=1, now=1001.0)
    conn.rpush("scan.c1", "m1", "m2")
    assert pending.oldest_waiting(conn, cluster=CLUSTER, now=1011.0) == pytest.approx(10.0)
    status.record(conn, cluster=CLUSTER, what="collect", now=1005.0)
    status.count_scan_task(conn, cluster=CLUSTER)
    (found,) = status.read(conn, clusters=[CLUSTER], queues=["scan.c1"], now=1020.0)
    assert (found.queued, found.waiting, found.in_flight, found.scan_tasks) == (2, 1, 1, 1)
    assert found.oldest_in_flight_seconds == pytest.approx(20.0)
    assert found.last_collect == pytest.approx(1005.0) and found.last_sweep is None
    assert not found.stalled(collect_interval=5.0)  # 15 s since the collect: 3 intervals
    assert found.stalled(collect_interval=2.0)  # 7.5 intervals
    dedupe.free_job_slot(conn, cluster=CLUSTER, job="job-a")
    (idle,) = status.read(conn, clusters=[CLUSTER], queues=["scan.c1"], now=5000.0)
    assert not idle.stalled(collect_interval=1.0)  # nothing in flight: no stall
