"""Redis and Postgres go away mid-run and come back: nothing acknowledged is lost or doubled.

Redis runs as the farm needs it (``appendonly yes``, ``appendfsync always``;
docs/reliability.md): a task the broker acknowledged survives even a SIGKILL
of Redis. Postgres stopped while a finished scan waits to be stored: the
report is stored once, after it is back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import redis

from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import reliability_fixtures as rel
from tests.support import services, sim_fixtures
from tests.support.farm_fixtures import SCAN_NAMESPACE
from tests.support.worker_fixtures import WorkerProcess

REPORT = Path(__file__).parents[1] / "data" / "trivy" / "node-alpine-3.19.json"


def _deploy(farm: rel.ReliableFarm, names: list[str]) -> dict[str, str]:
    sim, host = farm.sim, farm.registry.host
    digests = {}
    for name in names:
        digest = farm.registry.push(f"team/{name}", "1", content=f"restarts {name}")
        image = f"{host}/team/{name}:1"
        sim.set_digest(image, digest)
        sim.set_report(digest, REPORT)
        sim.create(rel.pod(name, image, secrets=["regcred"]))
        digests[name] = digest
    return digests


def _alive(farm: rel.ReliableFarm) -> None:
    for process in [*farm.watchers, *farm.workers]:
        assert process.proc is not None and process.proc.poll() is None, "a process died"


def test_redis_killed_and_restarted_loses_no_acknowledged_task_and_duplicates_nothing(
    tmp_path: Path,
    database_url: str,
    registry: services.Registry,
    sim: sim_fixtures.SimCluster,
    worker_factory: Callable[..., WorkerProcess],
    durable_redis: rel.DurableRedis,
) -> None:
    farm = rel.ReliableFarm(
        directory=tmp_path, database_url=database_url, redis_url=durable_redis.url,
        registry=registry, clusters={"alpha": sim}, start_worker=worker_factory,
        insecure=[registry.host], scan=dict(rel.FAST_REDELIVERY), reevaluate_seconds=2,
    )  # fmt: skip
    try:
        sim.create(rel.namespace())
        cred = rel.dockerconfig(registry.host, REGISTRY_USER, REGISTRY_PASSWORD)
        sim.create(rel.pull_secret("regcred", cred))
        monitor = rel.RedisMonitor(durable_redis.url)
        first = _deploy(farm, ["queued-a", "queued-b", "queued-c"])
        farm.start(workers=0)  # the watcher publishes; nobody consumes yet
        client = redis.Redis.from_url(durable_redis.url)
        farm.wait_for(lambda: client.llen("scan.alpha") == 3, timeout=60, what="3 queued tasks")
        client.close()

        durable_redis.kill()  # SIGKILL: only the append-only file survives
        durable_redis.start()
        client = redis.Redis.from_url(durable_redis.url)
        assert client.llen("scan.alpha") == 3  # every acknowledged publish survived
        client.close()

        farm.worker()
        rel.wait_finished(farm, 3)
        second = _deploy(farm, ["during-restart-a", "during-restart-b"])
        durable_redis.restart()  # mid-run, with the watcher and a worker connected
        rows = rel.wait_finished(farm, 5, timeout=120)
        digests = {**first, **second}
        assert sorted((r[0], r[1]) for r in rows) == sorted(
            (d, "succeeded") for d in digests.values()
        )
        counts = farm.query("SELECT digest, count(*) FROM scans GROUP BY digest")
        assert sorted(counts) == sorted((d, 1) for d in digests.values())  # nothing doubled
        farm.wait_for(lambda: not rel.leftovers(sim), timeout=30, what="no Job or Secret left")
        _alive(farm)
        monitor.stop()
        assert rel.one_task_per_digest(monitor.scan_tasks()) == {}
    finally:
        farm.stop()


def test_postgres_restarted_mid_ingest_stores_the_report_once(
    reliable_farm: rel.ReliableFarm, postgres_server: services.PostgresServer
) -> None:
    farm, sim = reliable_farm, reliable_farm.sim
    host = farm.registry.host
    sim.create(rel.pull_secret("regcred", rel.dockerconfig(host, REGISTRY_USER, REGISTRY_PASSWORD)))
    (digest,) = _deploy(farm, ["ingest"]).values()
    sim.faults.fail(500, verb="get", resource="pods/log", count=-1)  # hold the collect
    farm.start()
    farm.wait_for(
        lambda: sim.request_counts()[("get", "pods/log")] > 0, timeout=60, what="a collect"
    )
    postgres_server.crash()
    try:
        sim.faults.clear()
        farm.wait_for(
            lambda: "error connecting in 'scanqueue'" in farm.logs(),
            timeout=30,
            what="collect passes failing to reach the database",
        )
        assert len(sim.list("Job", SCAN_NAMESPACE)) == 1  # kept until its report is stored
    finally:
        postgres_server.start()
    rows = rel.wait_finished(farm, 1)
    assert [(r[0], r[1], r[4]) for r in rows] == [(digest, "succeeded", 7)]
    assert farm.query("SELECT count(*) FROM findings") == [(7,)]
    farm.wait_for(lambda: not rel.leftovers(sim), timeout=30, what="no Job or Secret left")
    _alive(farm)
