"""A canary credential, planted in pull secrets, appears nowhere after a full run with faults.

The run has API faults, a dropped watch and a worker SIGKILLed between Job
and resume. Afterwards the canary (password, and its base64 ``auth``) is
searched in raw Redis (keys and every command seen by MONITOR, message bodies
decoded), every log line, ``pg_dump``, Jobs/Pods/Events in the emulator,
Flower's task API and the watcher's and worker's metrics; and registry B, reached through
a proxy that keeps every byte, never receives registry A's credential.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import reliability_fixtures as rel
from tests.support.farm_fixtures import SCAN_NAMESPACE

REPORT = Path(__file__).parents[1] / "data" / "trivy" / "node-alpine-3.19.json"
B_USER, B_PASSWORD = "bob", "bob-registry-b-pw-1"


def test_canary_credential_reaches_no_output_and_no_other_registry_after_a_faulty_run(
    reliable_farm: rel.ReliableFarm,
    registry_factory: Callable[..., Any],
    capturing_proxy: Callable[[int], Any],
    flower_factory: Callable[[Path], rel.Flower],
) -> None:
    farm, sim = reliable_farm, reliable_farm.sim
    canary = rel.Canary.make("leak")
    a = farm.registry
    a.set_password(canary.user, canary.password)
    b = registry_factory(users={B_USER: B_PASSWORD})
    proxy = capturing_proxy(b.port)  # registry B as the cluster and the farm see it
    farm.insecure.append(proxy.host)

    sim.create(rel.pull_secret("canary-a", canary.dockerconfig(a.host)))
    sim.create(rel.pull_secret("cred-b", rel.dockerconfig(proxy.host, B_USER, B_PASSWORD)))
    images = {
        "on-a": (a, a.host, ["canary-a"]),
        "on-b-two-secrets": (b, proxy.host, ["canary-a", "cred-b"]),
        "on-b-a-secret-only": (b, proxy.host, ["canary-a"]),  # no credential for B: node mode
    }
    digests = {}
    for name, (server, host, secrets) in images.items():
        digest = server.push(f"team/{name}", "1", content=f"leak {name}")
        image = f"{host}/team/{name}:1"
        sim.set_digest(image, digest)
        sim.set_report(digest, REPORT)
        sim.create(rel.pod(name, image, secrets=secrets))
        digests[name] = digest

    monitor = rel.RedisMonitor(farm.redis_url)
    flower = flower_factory(farm.settings_file())
    sim.faults.fail(503, verb="list", resource="pods", count=1)
    sim.faults.fail(500, verb="create", resource="secrets", count=1)
    sim.faults.fail(500, verb="patch", resource="jobs", count=-1)  # stuck before resume...
    farm.start()
    farm.wait_for(
        lambda: sim.list("Secret", SCAN_NAMESPACE) and sim.request_counts()[("patch", "jobs")],
        timeout=60,
        what="a scan Job with its Secret, not resumed",
    )
    farm.workers[0].kill()  # ...when the worker dies
    sim.faults.clear()
    sim.faults.drop_watches()
    farm.worker(metrics=True)
    rows = rel.wait_finished(farm, 3, timeout=120)
    assert sorted((r[0], r[1]) for r in rows) == sorted((d, "succeeded") for d in digests.values())
    modes = dict(farm.query("SELECT digest, mode FROM scans"))
    assert modes[digests["on-b-a-secret-only"]] == "node"
    assert modes[digests["on-b-two-secrets"]] == "registry"
    farm.wait_for(lambda: not rel.leftovers(sim), timeout=30, what="no Job or Secret left")

    b_bytes = proxy.sent().decode(errors="replace")
    places = rel.leak_places(
        farm,
        monitor=monitor,
        flower=flower,
        extra={"bytes sent to registry B": b_bytes, "registry B access log": b.access_log()},
    )
    # each place really holds what it should, so that finding nothing means something
    b_auth = base64.b64encode(f"{B_USER}:{B_PASSWORD}".encode()).decode()
    assert b_auth in b_bytes  # registry B got its own credential, through the proxy
    assert "scanqueue.scan" in places["flower /api/tasks"]
    assert "scanqueue_tasks_published_total" in places["watcher 0 metrics"]
    assert "scanqueue_" in places["worker 1 metrics"]
    assert digests["on-a"] in places["redis MONITOR (raw and decoded messages)"]
    assert (
        "Traceback" in places["worker and watcher logs"]
        or "retried" in places["worker and watcher logs"]
    )
    rel.assert_nowhere(canary.needles(), places)
