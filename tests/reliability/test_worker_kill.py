"""A worker SIGKILLed in the middle of a scan loses nothing and duplicates nothing.

The kill lands at a point the test sees from outside: the emulator is told to
fail one API call with a 500 for as long as the test wants (creating the
Secret, resuming the Job, reading the pod log), so the worker is provably
stuck between two steps when it dies. Then the fault is cleared, a new worker
starts, Redis redelivers the late-acked task after the visibility timeout and
the scan completes: one Job ever per (cluster, digest, attempt), one scan
row, no scan Secret left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import reliability_fixtures as rel
from tests.support.farm_fixtures import SCAN_NAMESPACE

REPORT = Path(__file__).parents[1] / "data" / "trivy" / "node-alpine-3.19.json"


def _one_private_pod(farm: rel.ReliableFarm, name: str) -> str:
    sim = farm.sim
    host = farm.registry.host
    digest = farm.registry.push(f"team/{name}", "1", content=f"worker kill {name}")
    sim.create(rel.pull_secret("regcred", rel.dockerconfig(host, REGISTRY_USER, REGISTRY_PASSWORD)))
    image = f"{host}/team/{name}:1"
    sim.set_digest(image, digest)
    sim.set_report(digest, REPORT)
    sim.create(rel.pod(name, image, secrets=["regcred"]))
    return digest


def _recover_and_check(
    farm: rel.ReliableFarm, digest: str, jobs: Any, secrets: Any, monitor: rel.RedisMonitor
) -> None:
    farm.sim.faults.clear()
    farm.worker()
    rows = rel.wait_finished(farm, 1, timeout=90)
    assert [(r[0], r[1], r[4]) for r in rows] == [(digest, "succeeded", 7)]
    farm.wait_for(lambda: not rel.leftovers(farm.sim), timeout=30, what="no Job or Secret left")
    jobs.stop()
    secrets.stop()
    # one Job ever for (alpha, digest, attempt 1), and its one Secret
    assert len(jobs.names()) == 1, jobs.names()
    assert len(secrets.names()) == 1, secrets.names()
    assert rel.one_task_per_digest(monitor.scan_tasks()) == {}
    assert {d for _, d in monitor.scan_tasks()} == {digest}


def test_worker_killed_after_the_job_before_the_secret_completes_the_scan_on_redelivery(
    reliable_farm: rel.ReliableFarm,
) -> None:
    farm, sim = reliable_farm, reliable_farm.sim
    digest = _one_private_pod(farm, "killed-before-secret")
    sim.faults.fail(500, verb="create", resource="secrets", count=-1)
    jobs, secrets = rel.ObjectRecorder(sim, "Job"), rel.ObjectRecorder(sim, "Secret")
    monitor = rel.RedisMonitor(farm.redis_url)
    farm.start()
    farm.wait_for(
        lambda: sim.list("Job", SCAN_NAMESPACE) and sim.request_counts()[("create", "secrets")],
        timeout=60,
        what="a scan Job whose Secret could not be created",
    )
    (job,) = sim.list("Job", SCAN_NAMESPACE)
    assert job["spec"]["suspend"] is True  # never resumed without its Secret
    assert sim.list("Secret", SCAN_NAMESPACE) == []
    farm.workers[0].kill()
    _recover_and_check(farm, digest, jobs, secrets, monitor)


def test_worker_killed_after_the_job_and_the_secret_completes_the_scan_on_redelivery(
    reliable_farm: rel.ReliableFarm,
) -> None:
    farm, sim = reliable_farm, reliable_farm.sim
    digest = _one_private_pod(farm, "killed-after-both")
    sim.faults.fail(500, verb="patch", resource="jobs", count=-1)  # resuming the Job fails
    jobs, secrets = rel.ObjectRecorder(sim, "Job"), rel.ObjectRecorder(sim, "Secret")
    monitor = rel.RedisMonitor(farm.redis_url)
    farm.start()
    farm.wait_for(
        lambda: sim.list("Secret", SCAN_NAMESPACE) and sim.request_counts()[("patch", "jobs")],
        timeout=60,
        what="a suspended scan Job with its Secret",
    )
    (secret,) = sim.list("Secret", SCAN_NAMESPACE)
    (job,) = sim.list("Job", SCAN_NAMESPACE)
    assert [o["uid"] for o in secret["metadata"]["ownerReferences"]] == [job["metadata"]["uid"]]
    farm.workers[0].kill()
    _recover_and_check(farm, digest, jobs, secrets, monitor)


def test_worker_killed_during_collect_stores_the_report_once_after_restart(
    reliable_farm: rel.ReliableFarm,
) -> None:
    farm, sim = reliable_farm, reliable_farm.sim
    digest = _one_private_pod(farm, "killed-in-collect")
    sim.faults.fail(500, verb="get", resource="pods/log", count=-1)  # collect stops at the log
    jobs, secrets = rel.ObjectRecorder(sim, "Job"), rel.ObjectRecorder(sim, "Secret")
    monitor = rel.RedisMonitor(farm.redis_url)
    farm.start()

    def complete_and_log_read() -> bool:
        done = [
            j
            for j in sim.list("Job", SCAN_NAMESPACE)
            if any(c["type"] == "Complete" for c in (j.get("status") or {}).get("conditions", []))
        ]
        return bool(done) and sim.request_counts()[("get", "pods/log")] > 0

    farm.wait_for(complete_and_log_read, timeout=60, what="a complete Job whose log failed")
    assert [r[1] for r in rel.scan_rows(farm)] == ["running"]
    farm.workers[0].kill()
    _recover_and_check(farm, digest, jobs, secrets, monitor)


def test_dead_workers_tasks_are_looked_for_every_tenth_of_the_visibility_timeout() -> None:
    """kombu's default sweep (every 10 x 10 s) made a redelivery wait ~100 s past the timeout."""
    from scanqueue import config
    from workers import app as worker_app

    for timeout, every in ((9, 1), (60, 6), (3600, 10)):
        settings = config.Settings(broker=config.BrokerSettings(visibility_timeout_seconds=timeout))
        options = worker_app.make_app(settings).conf.broker_transport_options
        assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] == every
