"""The cluster API misbehaving: 429/500/503 bursts, dropped watches, a forced 410 Gone.

Everything still finishes: each image scanned once and stored, one task per
digest ever published, nothing left in the scan namespace, and the watcher
shows it re-listed after the 410 and resumed after the cut.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import reliability_fixtures as rel

REPORT = Path(__file__).parents[1] / "data" / "trivy" / "node-alpine-3.19.json"


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _deploy(farm: rel.ReliableFarm, names: list[str]) -> dict[str, str]:
    sim, host = farm.sim, farm.registry.host
    digests = {}
    for name in names:
        digest = farm.registry.push(f"team/{name}", "1", content=f"api faults {name}")
        image = f"{host}/team/{name}:1"
        sim.set_digest(image, digest)
        sim.set_report(digest, REPORT)
        sim.create(rel.pod(name, image, secrets=["regcred"]))
        digests[name] = digest
    return digests


def test_api_error_bursts_and_broken_watches_end_with_every_image_scanned_once(
    reliable_farm: rel.ReliableFarm,
) -> None:
    farm, sim = reliable_farm, reliable_farm.sim
    host = farm.registry.host
    sim.create(rel.pull_secret("regcred", rel.dockerconfig(host, REGISTRY_USER, REGISTRY_PASSWORD)))
    first = _deploy(farm, ["burst-a", "burst-b", "burst-c"])
    jobs = rel.ObjectRecorder(sim, "Job")  # before the faults: it lists Jobs once
    monitor = rel.RedisMonitor(farm.redis_url)
    faults = sim.faults
    faults.fail(429, verb="list", resource="pods", count=3, retry_after=0.5)
    faults.fail(503, verb="watch", resource="pods", count=2, retry_after=0.5)
    faults.fail(500, verb="get", resource="secrets", count=2)  # reading the pull secret
    faults.fail(503, verb="create", resource="jobs", count=2)
    faults.fail(500, verb="list", resource="jobs", count=3)  # capacity check, collect, sweep
    faults.fail(429, verb="get", resource="pods/log", count=2, retry_after=0.5)
    faults.fail(500, verb="delete", resource="secrets", count=1)
    farm.start()
    rel.wait_finished(farm, 3)

    faults.expire_watches("pods")  # the next watch gets 410 Gone: the watcher must re-list
    faults.drop_watches()  # and the open one is cut without its final chunk
    second = _deploy(farm, ["after-cut-a", "after-cut-b"])
    rows = rel.wait_finished(farm, 5)
    digests = {**first, **second}
    assert sorted((r[0], r[1], r[4]) for r in rows) == sorted(
        (d, "succeeded", 7) for d in digests.values()
    )
    farm.wait_for(lambda: not rel.leftovers(sim), timeout=30, what="no Job or Secret left")
    assert faults.injected == 3 + 2 + 2 + 2 + 3 + 2 + 1  # every injected fault was met
    # with backoff: the watcher waited before listing/watching again, the worker retried later
    assert re.search(r"watch of .* in alpha: .*429.*; again in \d", farm.watchers[0].output())
    assert re.search(r"scan submit will be retried in \d+\.\ds \(retry 1\)", farm.logs())
    metrics = farm.watchers[0].metrics()  # type: ignore[attr-defined]
    assert _metric(metrics, "scanqueue_watch_gone_total", cluster="alpha") >= 1
    assert _metric(metrics, "scanqueue_tasks_published_total", cluster="alpha") == 5
    monitor.stop()
    tasks = monitor.scan_tasks()
    assert rel.one_task_per_digest(tasks) == {}
    assert {d for _, d in tasks} == set(digests.values())
    jobs.stop()
    assert len(jobs.names()) == len(set(jobs.names())) == 5  # no fault made a second Job
