"""Scans waiting for an in-flight slot (scanqueue.scans.pending) against a real Redis.

What is checked: the cap is never exceeded, a waiting scan is started once a
slot is freed (its slot reserved so a newcomer cannot take it), namespaces
take turns, a start whose task never arrives is published again by the
safety net and not otherwise, a scan that ends frees its reservation, and a
scan waiting longer than its digest's claim lasts keeps the claim.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from scanqueue import config, dedupe, scans, status
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


def test_a_collect_frees_its_slot_and_starts_the_next_in_one_call(conn: redis.Redis) -> None:
    """``start(freeing=job)`` (a collect ending its Job) gives back that slot first, in the
    same script, and starts no more scans than the slots free then; an unknown Job frees
    nothing."""
    assert _take(conn, "a") and _take(conn, "b")
    assert not _take(conn, "c", now=1000.1)
    assert not _take(conn, "d", now=1000.2)
    unknown = pending.start(conn, cluster=CLUSTER, limit=2, now=1001.0, max_age=MAX_AGE,
                            freeing="job-nobody")  # fmt: skip
    assert unknown == []
    started = pending.start(conn, cluster=CLUSTER, limit=2, now=1001.0, max_age=MAX_AGE,
                            freeing="job-a")  # fmt: skip
    assert [p["request"]["scan_id"] for p in started] == ["c"]
    members = set(conn.zrange(dedupe.jobs_key(CLUSTER), 0, -1))
    assert members == {"job-b", "reserved:c"}
    assert pending.waiting(conn, cluster=CLUSTER) == 1


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


def _park_claimed(conn: redis.Redis, digest: str, *, ttl: int) -> str:
    """A digest claimed by the watcher for ``ttl`` seconds whose scan waits for a slot."""
    [decision] = dedupe.claim(conn, cluster=CLUSTER, digests=[digest], ttl_seconds=ttl)
    assert decision.status == "claimed"
    parked = pending.take_or_park(
        conn, cluster=CLUSTER, job=f"job-{decision.scan_id}", limit=0, now=1000.0,
        max_age=MAX_AGE, scan_id=decision.scan_id, namespace="team",
        payload={"request": {"scan_id": decision.scan_id, "digest": digest}},
    )  # fmt: skip
    assert not parked
    return decision.scan_id


def test_a_scan_waiting_longer_than_its_claim_keeps_it_and_is_not_published_twice(
    conn: redis.Redis,
) -> None:
    mine = _park_claimed(conn, "sha256:aa", ttl=5)
    # another cluster's scan holds this one's claim now: left alone
    theirs = _park_claimed(conn, "sha256:bb", ttl=5)
    conn.set(dedupe.inflight_key("sha256:bb"), "c2/other", ex=5)
    # lost claims (Redis restarted, say): taken again, unless the digest was scanned since
    lost = _park_claimed(conn, "sha256:cc", ttl=5)
    scanned = _park_claimed(conn, "sha256:dd", ttl=5)
    conn.delete(dedupe.inflight_key("sha256:cc"), dedupe.inflight_key("sha256:dd"))
    dedupe.mark_fresh(conn, "sha256:dd", ttl_seconds=600)

    renewed = pending.refresh_inflight(conn, cluster=CLUSTER, ttl_seconds=1800, every_seconds=450)

    assert renewed == 2
    assert conn.get(dedupe.inflight_key("sha256:aa")) == f"{CLUSTER}/{mine}"
    assert conn.ttl(dedupe.inflight_key("sha256:aa")) > 1700
    assert conn.get(dedupe.inflight_key("sha256:bb")) == "c2/other" != f"{CLUSTER}/{theirs}"
    assert conn.ttl(dedupe.inflight_key("sha256:bb")) <= 5
    assert conn.get(dedupe.inflight_key("sha256:cc")) == f"{CLUSTER}/{lost}"
    assert conn.get(dedupe.inflight_key("sha256:dd")) is None
    assert scanned
    # so the watcher's next pass, past the first claim's 5 s, does not publish it again
    [again] = dedupe.claim(conn, cluster=CLUSTER, digests=["sha256:aa"], ttl_seconds=1800)
    assert again.status == "inflight"
    # done once per interval, whoever asks
    assert pending.refresh_inflight(conn, cluster=CLUSTER, ttl_seconds=1800,
                                    every_seconds=450) is None  # fmt: skip


def test_the_periodic_pass_renews_the_claims_of_waiting_scans(conn: redis.Redis) -> None:
    mine = _park_claimed(conn, "sha256:aa", ttl=5)
    settings = config.Settings(
        database=config.DatabaseSettings(url="postgresql://unused"),
        broker=config.BrokerSettings(url="redis://unused"),
        scan=config.ScanSettings(inflight_ttl_seconds=1200),
        clusters=(config.ClusterSettings(name=CLUSTER, kubeconfig="unused", max_inflight=0),),
    )
    sent: list[dict[str, object]] = []
    ctx = scans.ScanContext(settings=settings, cluster=settings.clusters[0], api=None, db=None,
                            redis=conn, registry=None, publish=sent.append)  # fmt: skip
    assert scans.start_waiting(ctx) == 0  # a freed slot's start: claims are not its business
    assert conn.ttl(dedupe.inflight_key("sha256:aa")) <= 5
    assert scans.start_waiting(ctx, stale_after=60.0) == 0  # the periodic pass
    assert sent == []
    assert conn.get(dedupe.inflight_key("sha256:aa")) == f"{CLUSTER}/{mine}"
    assert conn.ttl(dedupe.inflight_key("sha256:aa")) > 1100


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
