"""The watcher against emulated clusters, real Redis and real Postgres.

Each test arranges workloads in one or more emulators, runs ``ClusterWatcher``s
and reads what they did: the inventory rows in Postgres and the raw task
messages on the clusters' Celery queues in Redis.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from scanqueue import dedupe, metrics
from tests.support import sim_fixtures
from tests.support.watcher_fixtures import WatchFarm, Workloads, wait_for

IMAGES = [f"registry.example.com/team/app-{k}:1" for k in range(10)]


def build_fleet(sim: sim_fixtures.SimCluster) -> Workloads:
    """200 pods in 40 workloads (Deployments, StatefulSets, DaemonSets, CronJobs), 10 images."""
    w = Workloads(sim)
    for i in range(30):
        # a third of them without the template hash: their ReplicaSet is read
        w.deployment(f"team-{'ab'[i % 2]}", f"web-{i}", IMAGES[i % 10], 5, template_hash=i % 3 > 0)
    for i in range(30, 34):
        w.statefulset("team-c", f"db-{i}", IMAGES[i % 10], 5)
    for i in range(34, 37):
        w.daemonset("team-c", f"agent-{i}", IMAGES[i % 10], 5)
    for i in range(37, 40):
        w.cronjob("team-d", f"backup-{i}", IMAGES[i % 10], 5)
    return w


def test_200_pods_in_40_workloads_with_10_digests_publish_10_tasks(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    build_fleet(sim)
    watcher = watch_farm.watch(sim, "eu")
    inventory = watch_farm.settle(watcher, containers=200)

    requests = watch_farm.requests("eu")
    assert sorted(r.digest for r in requests) == sorted(sim.digest_of(i) for i in IMAGES)
    assert len({r.scan_id for r in requests}) == 10
    workloads = Counter((kind, name) for _, kind, name, *_ in inventory)
    assert len(workloads) == 40
    assert all(n == 5 for n in workloads.values())
    kinds = Counter(kind for kind, _ in workloads)
    assert kinds == {"Deployment": 30, "StatefulSet": 4, "DaemonSet": 3, "CronJob": 3}
    assert {digest for *_, digest in inventory} == {sim.digest_of(i) for i in IMAGES}
    by_pod = {(ns, pod): (kind, name, digest) for ns, kind, name, pod, _, digest in inventory}
    assert by_pod[("team-a", "web-0-1-p0003")] == ("Deployment", "web-0", sim.digest_of(IMAGES[0]))
    backups = [v for (ns, pod), v in by_pod.items() if pod.startswith("backup-37-1-")]
    assert [v[:2] for v in backups] == [("CronJob", "backup-37")] * 5
    assert by_pod[("team-c", "db-31-4")][:2] == ("StatefulSet", "db-31")
    # the queued request names a real container of that digest, with its workload
    first = next(r for r in requests if r.digest == sim.digest_of(IMAGES[1]))
    assert first.cluster == "eu" and first.image == IMAGES[1]
    assert by_pod[(first.namespace, first.pod)] == (
        first.workload_kind,
        first.workload_name,
        first.digest,
    )


def test_second_cluster_publishes_only_the_digests_new_to_the_farm(
    sim_factory: Callable[..., sim_fixtures.SimCluster], watch_farm: WatchFarm
) -> None:
    eu, us = sim_factory(name="eu"), sim_factory(name="us")
    build_fleet(eu)
    new_images = ["registry.example.com/other/x:1", "registry.example.com/other/y:2"]
    w = Workloads(us)
    for i, image in enumerate([*IMAGES[:6], *new_images]):
        w.deployment("shop", f"svc-{i}", image, 3)
    w.statefulset("shop", "cache", IMAGES[0], 2)
    first = watch_farm.watch(eu, "eu")
    watch_farm.settle(first, containers=200)
    hits = metrics.value("scanqueue_dedupe_hits_total", cluster="us", reason="inflight")
    second = watch_farm.watch(us, "us")
    inventory = watch_farm.settle(second, containers=26)

    assert len(watch_farm.requests("eu")) == 10
    assert sorted(r.digest for r in watch_farm.requests("us")) == sorted(
        us.digest_of(i) for i in new_images
    )
    assert Counter((kind, name) for _, kind, name, *_ in inventory) == {
        **{("Deployment", f"svc-{i}"): 3 for i in range(8)},
        ("StatefulSet", "cache"): 2,
    }
    assert len(watch_farm.inventory("eu")) == 200  # one cluster's inventory leaves the other's
    assert metrics.value("scanqueue_dedupe_hits_total", cluster="us", reason="inflight") == hits + 6


def test_scaling_up_adds_inventory_and_a_new_version_adds_exactly_one_task(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    w = Workloads(sim)
    w.deployment("shop", "web", IMAGES[0], 3)
    w.deployment("shop", "api", IMAGES[1], 2)
    watcher = watch_farm.watch(sim, "eu")
    watch_farm.settle(watcher, containers=5)
    assert len(watch_farm.queued("eu")) == 2

    w.scale("shop", "web", 20)
    watch_farm.settle(watcher, containers=22)
    assert len(watch_farm.queued("eu")) == 2

    w.deployment("shop", "web", "registry.example.com/team/app-0:2", 4, revision="2")
    inventory = watch_farm.settle(watcher, containers=26)
    requests = watch_farm.requests("eu")
    assert len(requests) == 3
    assert requests[-1].image == "registry.example.com/team/app-0:2"
    assert requests[-1].workload_kind == "Deployment" and requests[-1].workload_name == "web"
    assert Counter(name for _, _, name, *_ in inventory) == {"web": 24, "api": 2}


def test_deleted_pods_leave_the_inventory(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    w = Workloads(sim)
    pods = w.deployment("shop", "web", IMAGES[0], 4)
    watcher = watch_farm.watch(sim, "eu")
    watch_farm.settle(watcher, containers=4)
    sim.delete("Pod", "shop", pods[0])
    sim.delete("Pod", "shop", pods[1])
    inventory = watch_farm.settle(watcher, containers=2)
    assert sorted(pod for _, _, _, pod, *_ in inventory) == sorted(pods[2:])
    assert len(watch_farm.queued("eu")) == 1


def test_dropped_watch_resumes_without_publishing_again(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    w = Workloads(sim)
    w.deployment("shop", "web", IMAGES[0], 3)
    watcher = watch_farm.watch(sim, "eu")
    watch_farm.settle(watcher, containers=3)
    restarts = metrics.value("scanqueue_watch_restarts_total", cluster="eu", reason="error")
    listed = metrics.value("scanqueue_watch_events_total", cluster="eu", type="LISTED")

    sim.faults.drop_watches()
    w.scale("shop", "web", 6)
    w.deployment("shop", "api", IMAGES[1], 1)
    watch_farm.settle(watcher, containers=7)

    assert sorted(r.digest for r in watch_farm.requests("eu")) == sorted(
        sim.digest_of(i) for i in IMAGES[:2]
    )
    assert metrics.value("scanqueue_watch_restarts_total", cluster="eu", reason="error") > restarts
    # resumed from its resourceVersion: no second list
    assert metrics.value("scanqueue_watch_events_total", cluster="eu", type="LISTED") == listed


def test_forced_410_relists_without_duplicates(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    w = Workloads(sim)
    pods = w.deployment("shop", "web", IMAGES[0], 3)
    watcher = watch_farm.watch(sim, "eu")
    watch_farm.settle(watcher, containers=3)
    gone = metrics.value("scanqueue_watch_gone_total", cluster="eu")

    sim.faults.expire_watches("pods")
    sim.delete("Pod", "shop", pods[0])  # happens while the watcher relists
    w.scale("shop", "web", 5)
    sim.faults.drop_watches()
    wait_for(
        lambda: metrics.value("scanqueue_watch_gone_total", cluster="eu") > gone,
        what="a 410 Gone seen by the watcher",
    )
    inventory = watch_farm.settle(watcher, containers=4)
    assert len({(ns, pod, ctr) for ns, _, _, pod, ctr, _ in inventory}) == 4
    assert pods[0] not in {pod for _, _, _, pod, *_ in inventory}
    assert len(watch_farm.queued("eu")) == 1


def test_restarted_watcher_publishes_nothing_for_fresh_digests(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    build_fleet(sim)
    first = watch_farm.watch(sim, "eu")
    watch_farm.settle(first, containers=200)
    for request in watch_farm.requests("eu"):  # what the workers do after each scan
        assert request.digest is not None
        dedupe.mark_fresh(watch_farm.redis, request.digest, ttl_seconds=86400)
    watch_farm.stop(first)
    hits = metrics.value("scanqueue_dedupe_hits_total", cluster="eu", reason="fresh")

    second = watch_farm.watch(sim, "eu")
    watch_farm.settle(second, containers=200)
    assert len(watch_farm.queued("eu")) == 10
    assert metrics.value("scanqueue_dedupe_hits_total", cluster="eu", reason="fresh") == hits + 10


def test_after_redis_lost_its_keys_postgres_says_what_is_fresh(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm, trivy_reports: dict[str, Any]
) -> None:
    from datetime import UTC, datetime

    from scanqueue import store

    w = Workloads(sim)
    w.deployment("shop", "web", IMAGES[0], 2)
    w.deployment("shop", "api", IMAGES[1], 2)
    report = next(iter(trivy_reports.values()))
    now = datetime.now(UTC)
    with watch_farm.pool.connection() as conn:  # IMAGES[0] was scanned a moment ago
        store.start_scan(
            conn,
            scan_id="s-earlier",
            cluster="eu",
            digest=sim.digest_of(IMAGES[0]),
            image=f"registry.example.com/team/app-0@{sim.digest_of(IMAGES[0])}",
            mode="registry",
            attempt=1,
            credential_source="shop/regcred",
            started_at=now,
        )
        store.finish_scan(conn, scan_id="s-earlier", report=report, finished_at=now)
    watcher = watch_farm.watch(sim, "eu")
    watch_farm.settle(watcher, containers=4)
    assert [r.digest for r in watch_farm.requests("eu")] == [sim.digest_of(IMAGES[1])]
    assert dedupe.is_fresh(watch_farm.redis, sim.digest_of(IMAGES[0]))


def test_excluded_namespaces_and_scan_pods_are_ignored(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    w = Workloads(sim)
    w.deployment("shop", "web", IMAGES[0], 2)
    w.deployment("kube-system", "dns", IMAGES[5], 2)
    w.bare_pod("shop", "scan-x", IMAGES[6])
    scan_pod = sim.get("Pod", "shop", "scan-x")  # labelled as scanqueue labels its scan pods
    assert scan_pod is not None
    scan_pod["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "scanqueue"}
    sim.replace(scan_pod)
    listed = metrics.value("scanqueue_watch_events_total", cluster="eu", type="LISTED")
    watcher = watch_farm.watch(sim, "eu", exclude_namespaces=("kube-system",))
    inventory = watch_farm.settle(watcher, containers=2)
    assert {ns for ns, *_ in inventory} == {"shop"}
    assert [r.digest for r in watch_farm.requests("eu")] == [sim.digest_of(IMAGES[0])]
    # the API server leaves scan pods out of the list and the watch (a label selector): the
    # watcher never decodes them (4 pods listed: shop's 2 and kube-system's 2, not scan-x)
    assert metrics.value("scanqueue_watch_events_total", cluster="eu", type="LISTED") == listed + 4
    added = metrics.value("scanqueue_watch_events_total", cluster="eu", type="ADDED")
    sim.create({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "scan-y", "namespace": "shop",
                             "labels": {"app.kubernetes.io/managed-by": "scanqueue"}},
                "spec": {"containers": [{"name": "app", "image": IMAGES[7]}]}})  # fmt: skip
    w.bare_pod("shop", "after-scan-y", IMAGES[8])  # its events come after scan-y's
    watch_farm.settle(watcher, containers=3)
    assert metrics.value("scanqueue_watch_events_total", cluster="eu", type="ADDED") == added + 1


def test_included_namespaces_are_watched_one_by_one(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    w = Workloads(sim)
    w.deployment("team-a", "web", IMAGES[0], 2)
    w.deployment("team-b", "api", IMAGES[1], 3)
    w.deployment("team-c", "other", IMAGES[2], 1)
    watcher = watch_farm.watch(sim, "eu", namespaces=("team-a", "team-b"))
    watch_farm.settle(watcher, containers=5)
    w.scale("team-b", "api", 4)
    w.deployment("team-c", "more", IMAGES[3], 1)
    inventory = watch_farm.settle(watcher, containers=6)
    assert {ns for ns, *_ in inventory} == {"team-a", "team-b"}
    assert sorted(r.digest for r in watch_farm.requests("eu")) == sorted(
        sim.digest_of(i) for i in IMAGES[:2]
    )


def test_pending_pod_is_published_once_it_runs(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    w = Workloads(sim)
    w.deployment("shop", "web", IMAGES[0], 1)
    w.bare_pod("shop", "late", IMAGES[7], nodeName="node-not-yet")  # no kubelet: stays Pending
    watcher = watch_farm.watch(sim, "eu")
    watch_farm.settle(watcher, containers=1)
    assert len(watch_farm.queued("eu")) == 1

    digest = sim.digest_of(IMAGES[7])
    sim.set_status(
        "Pod",
        "shop",
        "late",
        {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "app",
                    "image": IMAGES[7],
                    "imageID": f"docker-pullable://registry.example.com/team/app-7@{digest}",
                    "ready": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                }
            ],
        },
    )
    inventory = watch_farm.settle(watcher, containers=2)
    assert ("shop", "Pod", "late", "late", "app", digest) in inventory
    assert [r.digest for r in watch_farm.requests("eu")][-1] == digest


def test_failure_for_want_of_a_credential_gives_another_cluster_its_turn(
    sim_factory: Callable[..., sim_fixtures.SimCluster], watch_farm: WatchFarm
) -> None:
    eu, us = sim_factory(name="eu"), sim_factory(name="us")
    Workloads(eu).deployment("shop", "web", IMAGES[0], 1)
    Workloads(us).deployment("shop", "web", IMAGES[0], 1)
    digest = eu.digest_of(IMAGES[0])
    first = watch_farm.watch(eu, "eu")
    watch_farm.settle(first, containers=1)
    second = watch_farm.watch(us, "us")
    watch_farm.settle(second, containers=1)
    assert len(watch_farm.queued("eu")) == 1
    assert watch_farm.queued("us") == []

    dedupe.mark_failed_here(watch_farm.redis, digest, cluster="eu", ttl_seconds=3600)
    first.reevaluate()
    second.reevaluate()
    wait_for(lambda: watch_farm.queued("us"), what="the scan published for us")
    wait_for(first.idle, what="eu idle")
    assert len(watch_farm.queued("eu")) == 1  # eu does not retry within the interval
    assert [r.digest for r in watch_farm.requests("us")] == [digest]


def test_lost_scan_is_published_again_after_its_inflight_key_expires(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    Workloads(sim).deployment("shop", "web", IMAGES[0], 2)
    watcher = watch_farm.watch(sim, "eu")
    watch_farm.settle(watcher, containers=2)
    watcher.reevaluate()
    wait_for(watcher.idle, what="idle")
    assert len(watch_farm.queued("eu")) == 1  # still in flight: nothing new

    watch_farm.redis.delete(dedupe.inflight_key(sim.digest_of(IMAGES[0])))  # the key expired
    watcher.reevaluate()
    wait_for(lambda: len(watch_farm.queued("eu")) == 2, what="a second task")
    first, second = watch_farm.requests("eu")
    assert first.digest == second.digest and first.scan_id != second.scan_id


def test_init_containers_are_inventoried_and_scanned(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    w = Workloads(sim)
    w.bare_pod(
        "shop",
        "with-init",
        IMAGES[0],
        initContainers=[{"name": "setup", "image": IMAGES[8]}],
    )
    watcher = watch_farm.watch(sim, "eu")
    inventory = watch_farm.settle(watcher, containers=2)
    assert {(ctr, digest) for *_, ctr, digest in inventory} == {
        ("app", sim.digest_of(IMAGES[0])),
        ("setup", sim.digest_of(IMAGES[8])),
    }
    assert {r.container_type for r in watch_farm.requests("eu")} == {"app", "init"}


def test_api_errors_are_retried_with_backoff(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    Workloads(sim).deployment("shop", "web", IMAGES[0], 2)
    sim.faults.fail(503, verb="list", resource="pods", count=2)
    sim.faults.fail(429, verb="get", resource="replicasets", count=1, retry_after=0)
    watcher = watch_farm.watch(sim, "eu")
    inventory = watch_farm.settle(watcher, containers=2)
    assert len(watch_farm.queued("eu")) == 1
    assert sim.faults.injected >= 2
    assert metrics.value("scanqueue_watch_restarts_total", cluster="eu", reason="error") >= 2
    assert {kind for _, kind, *_ in inventory} <= {"Deployment", "ReplicaSet"}


def test_metrics_are_served_for_prometheus(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    import urllib.request

    Workloads(sim).deployment("shop", "web", IMAGES[0], 2)
    watcher = watch_farm.watch(sim, "metrics-eu")
    watch_farm.settle(watcher, containers=2)
    server = metrics.serve(0)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'scanqueue_tasks_published_total{cluster="metrics-eu"} 1.0' in text
    assert 'scanqueue_watch_events_total{cluster="metrics-eu",type="LISTED"} 2.0' in text
    assert 'scanqueue_inventory_rows_written_total{cluster="metrics-eu"} 2.0' in text
    for name in ("scanqueue_dedupe_hits_total", "scanqueue_watch_restarts_total",
                 "scanqueue_watch_gone_total", "scanqueue_watch_lag_seconds"):  # fmt: skip
        assert f"# TYPE {name.removesuffix('_total')}" in text


def test_redis_outage_delays_tasks_but_loses_none(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm, redis_server: Any
) -> None:
    w = Workloads(sim)
    w.deployment("shop", "web", IMAGES[0], 2)
    watcher = watch_farm.watch(sim, "eu")
    watch_farm.settle(watcher, containers=2)
    assert len(watch_farm.queued("eu")) == 1

    published = metrics.value("scanqueue_tasks_published_total", cluster="eu")
    redis_server.stop()
    try:
        w.deployment("shop", "api", IMAGES[1], 2)
        wait_for(  # the inventory goes on without Redis
            lambda: len(watch_farm.inventory("eu")) == 4, what="four containers"
        )
        wait_for(
            lambda: (
                metrics.value("scanqueue_tasks_published_total", cluster="eu") == published
                and not watcher.idle()
            ),
            what="the new digest waiting for Redis",
        )
    finally:
        redis_server.start()
    # Redis came back empty (no persistence): the waiting digest is claimed and published
    wait_for(lambda: watch_farm.queued("eu"), what="the task published after the outage")
    assert [r.digest for r in watch_farm.requests("eu")] == [sim.digest_of(IMAGES[1])]


def test_postgres_outage_delays_the_inventory_but_loses_none(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm, postgres_server: Any
) -> None:
    w = Workloads(sim)
    w.deployment("shop", "web", IMAGES[0], 2)
    watcher = watch_farm.watch(sim, "eu")
    watch_farm.settle(watcher, containers=2)

    postgres_server.stop("immediate")
    try:
        w.deployment("shop", "api", IMAGES[1], 3)
        sim.delete("Pod", "shop", "web-1-p0000")
        wait_for(lambda: len(watcher.running()) == 4, what="the watcher's picture updated")
    finally:
        postgres_server.start()
    inventory = watch_farm.settle(watcher, containers=4)
    assert sorted(pod for _, _, _, pod, *_ in inventory) == [
        "api-1-p0000",
        "api-1-p0001",
        "api-1-p0002",
        "web-1-p0001",
    ]
    assert len(watch_farm.queued("eu")) == 2


def test_bookmarks_let_a_dropped_watch_resume_after_the_history_was_compacted(
    sim_factory: Callable[..., sim_fixtures.SimCluster], watch_farm: WatchFarm
) -> None:
    sim = sim_factory(bookmark_interval=0.1)
    w = Workloads(sim)
    w.deployment("shop", "web", IMAGES[0], 2)
    watcher = watch_farm.watch(sim, "bm")
    watch_farm.settle(watcher, containers=2)
    for i in range(5):  # other objects move the cluster's resourceVersion past the list's
        w.pull_secret("shop", f"unrelated-{i}", {})
    seen = metrics.value("scanqueue_watch_events_total", cluster="bm", type="BOOKMARK")
    wait_for(
        lambda: (
            metrics.value("scanqueue_watch_events_total", cluster="bm", type="BOOKMARK") >= seen + 2
        ),
        what="bookmarks after the unrelated changes",
    )
    listed = metrics.value("scanqueue_watch_events_total", cluster="bm", type="LISTED")
    gone = metrics.value("scanqueue_watch_gone_total", cluster="bm")

    sim.cluster.compact()  # the list's resourceVersion is too old to resume from now
    sim.faults.drop_watches()
    w.scale("shop", "web", 3)
    watch_farm.settle(watcher, containers=3)
    assert metrics.value("scanqueue_watch_gone_total", cluster="bm") == gone
    assert metrics.value("scanqueue_watch_events_total", cluster="bm", type="LISTED") == listed


def test_a_broken_cluster_does_not_hold_up_another(
    sim_factory: Callable[..., sim_fixtures.SimCluster], watch_farm: WatchFarm
) -> None:
    broken, healthy = sim_factory(name="broken"), sim_factory(name="healthy")
    Workloads(broken).deployment("shop", "web", IMAGES[0], 2)
    Workloads(healthy).deployment("shop", "web", IMAGES[1], 2)
    broken.faults.fail(503, count=-1, retry_after=None)  # every request, until cleared
    stuck = watch_farm.watch(broken, "broken")
    fine = watch_farm.watch(healthy, "healthy")
    watch_farm.settle(fine, containers=2)
    assert [r.digest for r in watch_farm.requests("healthy")] == [healthy.digest_of(IMAGES[1])]
    assert not stuck.ready.is_set()

    broken.faults.clear()
    watch_farm.settle(stuck, containers=2)
    assert [r.digest for r in watch_farm.requests("broken")] == [broken.digest_of(IMAGES[0])]


def test_digest_is_scanned_again_when_its_rescan_interval_ended(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    Workloads(sim).deployment("shop", "web", IMAGES[0], 1)
    watcher = watch_farm.watch(sim, "eu")
    watch_farm.settle(watcher, containers=1)
    digest = sim.digest_of(IMAGES[0])
    dedupe.mark_fresh(watch_farm.redis, digest, ttl_seconds=1)  # the worker's success
    watcher.reevaluate()
    wait_for(watcher.idle, what="idle")
    assert len(watch_farm.queued("eu")) == 1  # fresh: nothing to do

    wait_for(lambda: not dedupe.is_fresh(watch_farm.redis, digest), what="the interval's end")
    watcher.reevaluate()
    wait_for(lambda: len(watch_farm.queued("eu")) == 2, what="the rescan")


def test_a_pod_with_new_pull_secrets_ends_the_credential_wait_of_its_digest(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    w = Workloads(sim)
    w.deployment("shop", "web", IMAGES[0], 1, pull_secrets=["old-cred"])
    digest = sim.digest_of(IMAGES[0])
    watcher = watch_farm.watch(sim, "eu")
    watch_farm.settle(watcher, containers=1)
    assert len(watch_farm.queued("eu")) == 1
    # the scan was refused: the worker marks the digest failed here for a credential
    dedupe.mark_failed_backoff(
        watch_farm.redis, digest, cluster="eu", kind="credential", scan_id=None,
        delay=lambda _: 3600, window_seconds=3600,
    )  # fmt: skip
    watcher.reevaluate()
    wait_for(watcher.idle, what="idle")
    assert len(watch_farm.queued("eu")) == 1  # the wait holds

    # the team adds a working pull secret: new pods name it
    w.deployment("shop", "web-fixed", IMAGES[0], 1, pull_secrets=["new-cred"])
    wait_for(lambda: len(watch_farm.queued("eu")) == 2, what="the digest published again")
    assert watch_farm.requests("eu")[-1].pull_secrets == ("new-cred",)
    assert dedupe.failed_marks(watch_farm.redis, digest, ["eu"]) == []


def test_new_pull_secrets_do_not_end_a_wait_for_another_reason(
    sim: sim_fixtures.SimCluster, watch_farm: WatchFarm
) -> None:
    w = Workloads(sim)
    w.deployment("shop", "web", IMAGES[0], 1, pull_secrets=["old-cred"])
    digest = sim.digest_of(IMAGES[0])
    watcher = watch_farm.watch(sim, "eu")
    watch_farm.settle(watcher, containers=1)
    dedupe.mark_failed_backoff(
        watch_farm.redis, digest, cluster="eu", kind="failed", scan_id=None,
        delay=lambda _: 3600, window_seconds=3600,
    )  # fmt: skip
    w.deployment("shop", "web-fixed", IMAGES[0], 1, pull_secrets=["new-cred"])
    wait_for(lambda: watch_farm.settle(watcher, containers=2), what="both pods seen")
    wait_for(watcher.idle, what="idle")
    assert len(watch_farm.queued("eu")) == 1
    assert [m.kind for m in dedupe.failed_marks(watch_farm.redis, digest, ["eu"])] == ["failed"]
