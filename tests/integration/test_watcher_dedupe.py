"""The farm-wide dedupe and the task publisher, against a real Redis."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import redis

from scanqueue import dedupe, discovery, publish

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64
D3 = "sha256:" + "c" * 64
CANARY = "canary-pw-8f3e2b"  # a secret value that must never reach Redis


def statuses(decisions: list[dedupe.Decision]) -> dict[str, str]:
    return {d.digest: d.status for d in decisions}


def test_a_digest_is_claimed_once_across_clusters(redis_url: str) -> None:
    r = dedupe.client(redis_url)
    first = dedupe.claim(r, cluster="eu", digests=[D1, D2], ttl_seconds=60)
    assert statuses(first) == {D1: "claimed", D2: "claimed"}
    assert all(len(d.scan_id) == 32 for d in first)
    second = dedupe.claim(r, cluster="us", digests=[D1, D2, D3], ttl_seconds=60)
    assert statuses(second) == {D1: "inflight", D2: "inflight", D3: "claimed"}
    held = dedupe.in_flight(r, D1)
    assert held is not None
    assert (held.cluster, held.scan_id) == ("eu", first[0].scan_id)
    assert 0 < held.ttl_seconds <= 60


def test_concurrent_watchers_claim_each_digest_exactly_once(redis_url: str) -> None:
    digests = [f"sha256:{i:064x}" for i in range(300)]
    won: list[dedupe.Decision] = []
    lock = threading.Lock()

    def watcher(cluster: str) -> None:
        r = dedupe.client(redis_url)
        decisions = dedupe.claim(r, cluster=cluster, digests=digests, ttl_seconds=60)
        with lock:
            won.extend(d for d in decisions if d.status == "claimed")

    threads = [threading.Thread(target=watcher, args=(f"c{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(d.digest for d in won) == sorted(digests)


def test_fresh_digest_is_not_claimed_until_the_interval_ends(redis_url: str) -> None:
    r = dedupe.client(redis_url)
    dedupe.claim(r, cluster="eu", digests=[D1], ttl_seconds=60)
    dedupe.mark_fresh(r, D1, ttl_seconds=3600)
    assert dedupe.in_flight(r, D1) is None
    assert statuses(dedupe.claim(r, cluster="us", digests=[D1], ttl_seconds=60)) == {D1: "fresh"}
    assert 3590 < r.ttl(dedupe.fresh_key(D1)) <= 3600
    r.delete(dedupe.fresh_key(D1))  # the interval ended
    assert statuses(dedupe.claim(r, cluster="us", digests=[D1], ttl_seconds=60)) == {D1: "claimed"}


def test_failure_in_one_cluster_gives_the_next_cluster_its_turn(redis_url: str) -> None:
    r = dedupe.client(redis_url)
    dedupe.claim(r, cluster="eu", digests=[D1], ttl_seconds=60)
    dedupe.mark_failed_here(r, D1, cluster="eu", ttl_seconds=3600)
    assert statuses(dedupe.claim(r, cluster="eu", digests=[D1], ttl_seconds=60)) == {
        D1: "failed-here"
    }
    assert statuses(dedupe.claim(r, cluster="us", digests=[D1], ttl_seconds=60)) == {D1: "claimed"}
    assert dedupe.failed_clusters(r, D1, ["eu", "us"]) == ["eu"]


def test_a_stale_scan_failing_does_not_free_a_newer_claim(redis_url: str) -> None:
    r = dedupe.client(redis_url)
    (old,) = dedupe.claim(r, cluster="eu", digests=[D1], ttl_seconds=60)
    r.delete(dedupe.inflight_key(D1))  # its claim expired; another cluster claimed the digest
    (new,) = dedupe.claim(r, cluster="us", digests=[D1], ttl_seconds=60)
    dedupe.mark_failed_here(r, D1, cluster="eu", ttl_seconds=3600, scan_id=old.scan_id)
    held = dedupe.in_flight(r, D1)
    assert held is not None and (held.cluster, held.scan_id) == ("us", new.scan_id)
    assert dedupe.failed_clusters(r, D1, ["eu", "us"]) == ["eu"]
    dedupe.mark_failed_here(r, D1, cluster="us", ttl_seconds=3600, scan_id=new.scan_id)
    assert dedupe.in_flight(r, D1) is None


def test_scan_job_slots_admit_at_most_the_limit_and_heal(redis_url: str) -> None:
    r = dedupe.client(redis_url)
    take = lambda job, now: dedupe.take_job_slot(  # noqa: E731
        r, cluster="eu", job=job, limit=2, now=now, max_age=100
    )
    assert take("j1", 1000) and take("j2", 1000)
    assert not take("j3", 1000)  # full
    assert take("j1", 1001)  # a redelivery of a Job keeps its slot
    dedupe.free_job_slot(r, cluster="eu", job="j2")
    assert take("j3", 1002)
    assert dedupe.jobs_in_flight(r, cluster="eu") == 2
    assert take("j4", 1200)  # j1 and j3 are older than a Job can live: pruned
    assert dedupe.jobs_in_flight(r, cluster="eu") == 1


def test_release_and_refresh_touch_only_the_holders_key(redis_url: str) -> None:
    r = dedupe.client(redis_url)
    (mine,) = dedupe.claim(r, cluster="eu", digests=[D1], ttl_seconds=60)
    assert not dedupe.release(r, D1, scan_id="someone-else")
    assert not dedupe.refresh(r, D1, scan_id="someone-else", ttl_seconds=600)
    assert dedupe.refresh(r, D1, scan_id=mine.scan_id, ttl_seconds=600)
    assert r.ttl(dedupe.inflight_key(D1)) > 60
    assert dedupe.release(r, D1, scan_id=mine.scan_id)
    assert dedupe.in_flight(r, D1) is None
    assert statuses(dedupe.claim(r, cluster="us", digests=[D1], ttl_seconds=60)) == {D1: "claimed"}
    assert dedupe.release(r, D1)  # unconditional


def test_expired_inflight_key_lets_a_lost_scan_be_claimed_again(redis_url: str) -> None:
    r = dedupe.client(redis_url)
    dedupe.claim(r, cluster="eu", digests=[D1], ttl_seconds=60)
    r.pexpire(dedupe.inflight_key(D1), 1)
    while r.exists(dedupe.inflight_key(D1)):
        time.sleep(0.005)
    assert statuses(dedupe.claim(r, cluster="eu", digests=[D1], ttl_seconds=60)) == {D1: "claimed"}


def test_unsettled_lists_only_digests_redis_knows_nothing_about(redis_url: str) -> None:
    r = dedupe.client(redis_url)
    dedupe.mark_many_fresh(r, [D1], ttl_seconds=60)
    dedupe.claim(r, cluster="eu", digests=[D2], ttl_seconds=60)
    assert dedupe.unsettled(r, cluster="us", digests=[D1, D2, D3]) == [D3]


def request(cluster: str, digest: str, scan_id: str) -> discovery.ScanRequest:
    return discovery.ScanRequest(
        cluster=cluster,
        namespace="team-a",
        pod="web-1",
        node="node-1",
        workload_kind="Deployment",
        workload_name="web",
        container="app",
        container_type="app",
        image="registry.example.com/team/app:1",
        digest=digest,
        pull_secrets=("regcred",),
        service_account="default",
        scan_id=scan_id,
    )


def queued(redis_url: str, queue: str) -> list[dict[str, Any]]:
    r = redis.Redis.from_url(redis_url)
    return [json.loads(raw) for raw in r.lrange(queue, 0, -1)]


def test_task_is_published_by_name_on_the_clusters_queue(redis_url: str) -> None:
    publisher = publish.Publisher(redis_url)
    try:
        task_id = publisher.publish(request("prod-eu", D1, "scan-1"))
    finally:
        publisher.close()
    assert task_id == "scan-1"
    (message,) = queued(redis_url, "scan.prod-eu")
    assert message["headers"]["task"] == "scanqueue.scan"
    assert message["headers"]["id"] == "scan-1"
    assert message["content-type"] == "application/json"
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert args == []
    assert discovery.from_payload(kwargs["request"]) == request("prod-eu", D1, "scan-1")
    assert kwargs["request"]["v"] == 1
    # what Flower shows of it: the digest and the pod, given (not a saferepr of the payload)
    sent = request("prod-eu", D1, "scan-1")
    assert message["headers"]["argsrepr"] == "()"
    assert message["headers"]["kwargsrepr"] == (
        f"{{'request': '{D1} for {sent.namespace}/{sent.pod}'}}"
    )
    assert queued(redis_url, "scan.other") == []


def test_no_secret_value_reaches_redis(redis_url: str) -> None:
    """A pod whose pull secret holds a canary password: only the secret's name is queued."""
    pod = {
        "metadata": {"name": "web-1", "namespace": "team-a"},
        "spec": {
            "nodeName": "n1",
            "imagePullSecrets": [{"name": "regcred"}],
            "containers": [{"name": "app", "image": "registry.example.com/team/app:1"}],
        },
        "status": {"containerStatuses": [{"name": "app", "imageID": D1}]},
    }
    secret_content = json.dumps({"auths": {"registry.example.com": {"password": CANARY}}})
    assert CANARY in secret_content  # what the worker will read at scan time, not before
    (req,) = discovery.requests(
        pod, cluster="prod", owners=discovery.OwnerResolver(lambda *a: None)
    )
    r = dedupe.client(redis_url)
    (decision,) = dedupe.claim(r, cluster="prod", digests=[D1], ttl_seconds=60)
    publisher = publish.Publisher(redis_url)
    try:
        publisher.publish(discovery.ScanRequest(**{**_fields(req), "scan_id": decision.scan_id}))
    finally:
        publisher.close()
    raw = redis.Redis.from_url(redis_url)
    dump = b""
    for key in raw.scan_iter("*"):
        kind = raw.type(key)
        if kind == b"list":
            dump += b"".join(raw.lrange(key, 0, -1))
        elif kind == b"string":
            dump += raw.get(key) or b""
        elif kind == b"set":
            dump += b"".join(raw.smembers(key))
        elif kind == b"hash":
            dump += b"".join(k + v for k, v in raw.hgetall(key).items())
    decoded = dump + b"".join(
        base64.b64decode(json.loads(m)["body"]) for m in raw.lrange("scan.prod", 0, -1)
    )
    assert b"regcred" in decoded
    assert CANARY.encode() not in decoded
    assert base64.b64encode(CANARY.encode()) not in decoded


def _fields(req: discovery.ScanRequest) -> dict[str, Any]:
    return {f: getattr(req, f) for f in req.__dataclass_fields__}


def test_the_broker_channel_shares_one_redis_client_per_pool(redis_url: str) -> None:
    """scanqueue's kombu transport (the workers' and the watcher's) builds one Redis client
    per connection pool instead of one per command, and still moves messages."""
    import kombu

    publish.use_shared_clients()
    with kombu.Connection(redis_url) as conn:
        channel: Any = conn.default_channel
        assert isinstance(conn.transport, publish.RedisTransport)
        assert conn.as_uri().startswith("redis://")  # what Flower reads the scheme of
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.connection_pool is channel.pool
        queue = kombu.Queue("sq-test-shared-client", routing_key="sq-test-shared-client")
        with conn.Producer() as producer:
            for n in range(3):
                producer.publish({"n": n}, routing_key=queue.name, declare=[queue])
        received = []
        for _ in range(3):
            message = queue(channel).get(no_ack=False)
            assert message is not None
            received.append(message.payload["n"])
            message.ack()
        assert received == [0, 1, 2]
        channel._pool = None  # a reconnection makes a new pool: it gets its own client
        with channel.conn_or_acquire() as third:
            assert third is not first and third.connection_pool is channel.pool


def test_claims_of_scans_in_flight_are_renewed_for_their_holders_only(redis_url: str) -> None:
    """The periodic pass renews the claims of scans whose Jobs still exist (a finished Job
    can wait long for its collect): each only while its scan holds it, at most once per
    interval per cluster."""
    r = dedupe.client(redis_url)
    r.flushall()
    (mine,) = dedupe.claim(r, cluster="eu", digests=[D1], ttl_seconds=60)
    (theirs,) = dedupe.claim(r, cluster="eu", digests=[D2], ttl_seconds=60)
    claims = [(D1, mine.scan_id), (D2, "not-the-holder"), (D3, "nobody")]
    assert dedupe.refresh_claims(r, cluster="eu", claims=claims, ttl_seconds=600,
                                 every_seconds=30) == 1  # fmt: skip
    assert r.ttl(dedupe.inflight_key(D1)) > 60
    assert r.ttl(dedupe.inflight_key(D2)) <= 60  # another scan's claim is left as it was
    assert not r.exists(dedupe.inflight_key(D3))  # nothing claimed is created
    # not due again within the interval, whatever is asked; another cluster is
    assert dedupe.refresh_claims(r, cluster="eu", claims=claims, ttl_seconds=900,
                                 every_seconds=30) == -1  # fmt: skip
    assert r.ttl(dedupe.inflight_key(D1)) <= 600
    assert dedupe.refresh_claims(r, cluster="us", claims=[(D2, theirs.scan_id)],
                                 ttl_seconds=900, every_seconds=30) == 1  # fmt: skip
    assert r.ttl(dedupe.inflight_key(D2)) > 600
