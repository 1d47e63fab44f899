"""The watcher end to end: the real ``scanqueue watch`` process over two emulated clusters.

With real workers, Redis, Postgres and the private registry: a digest that
runs in both clusters is scanned once for the farm, every container of both
clusters is in the inventory, ``scanqueue explain`` tells where credentials
come from without showing them, a restarted watcher publishes nothing for
what is fresh, a cluster whose credential is refused hands the digest over
to another cluster that runs it, and SIGTERM/SIGINT stop the watcher cleanly.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import sim_fixtures
from tests.support.farm_fixtures import Farm, WatcherProcess
from tests.support.watcher_fixtures import Workloads

CANARY_USER = "watch-canary"
CANARY = "Watch-Canary-Pw-41d7c2e9"
NS = "team-a"


def pull_secret(w: Workloads, host: str, name: str, user: str, password: str) -> None:
    w.pull_secret(
        NS, name, {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}
    )


def inventory(farm: Farm, cluster: str) -> list[tuple[Any, ...]]:
    return farm.query(
        """SELECT c.pod, c.container, c.digest, w.kind, w.name
             FROM containers c JOIN clusters cl ON cl.id = c.cluster_id
             JOIN workloads w ON w.id = c.workload_id
            WHERE cl.name = %s AND c.gone_at IS NULL ORDER BY 1""",
        cluster,
    )


def finished_scans(farm: Farm) -> list[tuple[Any, ...]]:
    return farm.query(
        """SELECT s.digest, cl.name, s.status, s.credential_source
             FROM scans s JOIN clusters cl ON cl.id = s.cluster_id
            WHERE s.status NOT IN ('pending', 'running') ORDER BY s.started_at"""
    )


@pytest.fixture
def two_clusters(
    farm: Farm, sim_factory: Callable[..., sim_fixtures.SimCluster]
) -> dict[str, Workloads]:
    farm.clusters["beta"] = sim_factory(name="beta")
    return {name: Workloads(sim) for name, sim in farm.clusters.items()}


def run_pods(
    w: Workloads, image: str, digest: str, name: str, replicas: int, secret: str = "regcred"
) -> None:
    w.sim.set_digest(image, digest)
    w.deployment(NS, name, image, replicas, pull_secrets=[secret])


def test_a_digest_running_in_two_clusters_is_scanned_once_and_inventoried_in_both(
    farm: Farm, two_clusters: dict[str, Workloads], tmp_path: Path
) -> None:
    registry = farm.registry
    registry.set_password(CANARY_USER, CANARY)
    host = registry.host
    shared = registry.push("team/shared", "1", content="watch e2e shared")
    alpha_only = registry.push("team/alpha-only", "1", content="watch e2e alpha")
    beta_only = registry.push("team/beta-only", "1", content="watch e2e beta")
    alpha, beta = two_clusters["alpha"], two_clusters["beta"]
    for w in (alpha, beta):
        pull_secret(w, host, "regcred", CANARY_USER, CANARY)
    run_pods(alpha, f"{host}/team/shared:1", shared, "web", 3)
    run_pods(alpha, f"{host}/team/alpha-only:1", alpha_only, "worker", 1)
    run_pods(beta, f"{host}/team/shared:1", shared, "frontend", 2)
    run_pods(beta, f"{host}/team/beta-only:1", beta_only, "batch", 2)

    farm.start()
    scans = farm.wait_for(
        lambda: (s := finished_scans(farm)) and len(s) >= 3 and s,
        timeout=120,
        what="three finished scans",
    )
    farm.wait_for(
        lambda: len(inventory(farm, "alpha")) == 4 and len(inventory(farm, "beta")) == 4,
        timeout=30,
        what="both inventories complete",
    )
    assert sorted(s[0] for s in scans) == sorted([shared, alpha_only, beta_only])
    assert all(s[2] == "succeeded" for s in scans), scans
    assert {s[3] for s in scans} == {f"{NS}/regcred ({host})"}
    assert {(s[0], s[1]) for s in scans} >= {(alpha_only, "alpha"), (beta_only, "beta")}
    assert sorted((r[2], r[3], r[4]) for r in inventory(farm, "beta")) == sorted(
        [(shared, "Deployment", "frontend")] * 2 + [(beta_only, "Deployment", "batch")] * 2
    )
    assert sorted((r[2], r[4]) for r in inventory(farm, "alpha")) == sorted(
        [(shared, "web")] * 3 + [(alpha_only, "worker")]
    )

    pod = beta.sim.list("Pod", NS, label_selector="app=frontend")[0]["metadata"]["name"]
    explained = subprocess.run(
        [
            sys.executable,
            "-m",
            "scanqueue.cli",
            "explain",
            pod,
            "--cluster",
            "beta",
            "--namespace",
            NS,
        ],
        env={**os.environ, "SCANQUEUE_CONFIG": str(farm.config_path)},
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert explained.returncode == 0, explained.stderr
    out = explained.stdout
    assert f"digest     {shared}" in out
    assert "Deployment/frontend" in out
    assert f"1. secret {NS}/regcred, registry key {host}" in out
    assert "last scan  succeeded" in out
    assert "farm       fresh" in out

    farm.stop()
    places = {
        "watcher and worker logs": farm.logs(),
        "explain": out + explained.stderr,
        "redis": _redis_dump(farm.redis_url),
        "postgres": "\n".join(
            str(r) for t in ("containers", "scans", "workloads") for r in farm.query(f"TABLE {t}")
        ),
    }
    needles = [CANARY, base64.b64encode(f"{CANARY_USER}:{CANARY}".encode()).decode()]
    for where, text in places.items():
        for needle in needles:
            assert needle not in text, f"a credential value leaked into {where}"


def test_restarted_watcher_publishes_nothing_for_fresh_digests(
    farm: Farm, two_clusters: dict[str, Workloads]
) -> None:
    registry = farm.registry
    host = registry.host
    alpha = two_clusters["alpha"]
    pull_secret(alpha, host, "regcred", REGISTRY_USER, REGISTRY_PASSWORD)
    digests = [registry.push(f"team/r{i}", "1", content=f"restart {i}") for i in range(3)]
    for i, digest in enumerate(digests):
        run_pods(alpha, f"{host}/team/r{i}:1", digest, f"app-{i}", 2)
    farm.start()
    farm.wait_for(lambda: len(finished_scans(farm)) == 3, timeout=120, what="three scans")
    assert farm.watchers[0].stop() == 0

    farm.start_watcher()
    late = registry.push("team/late", "1", content="restart late")
    run_pods(alpha, f"{host}/team/late:1", late, "late", 1)
    scans = farm.wait_for(
        lambda: (s := finished_scans(farm)) and len(s) >= 4 and s, timeout=120, what="fourth"
    )
    assert sorted(s[0] for s in scans) == sorted([*digests, late])
    # no scan task waits for a digest already scanned (beat's collect/sweep tasks may share
    # the queue: only scan tasks count)
    queued = redis.Redis.from_url(farm.redis_url).lrange("scan.alpha", 0, -1)
    tasks = [json.loads(m)["headers"]["task"] for m in queued]
    assert "scanqueue.scan" not in tasks, tasks


def test_refused_in_one_cluster_the_digest_is_scanned_in_another_that_runs_it(
    farm: Farm, two_clusters: dict[str, Workloads]
) -> None:
    farm.cluster_options = {"scan_mode": "registry"}  # no node-mode fallback: refusal is final
    farm.scan = {"allow_anonymous": False}
    registry = farm.registry
    host = registry.host
    digest = registry.push("team/handover", "1", content="handover")
    alpha, beta = two_clusters["alpha"], two_clusters["beta"]
    pull_secret(alpha, host, "regcred", REGISTRY_USER, "a-stale-password")
    pull_secret(beta, host, "regcred", REGISTRY_USER, REGISTRY_PASSWORD)
    run_pods(alpha, f"{host}/team/handover:1", digest, "web", 1)
    run_pods(beta, f"{host}/team/handover:1", digest, "web", 1)

    farm.start(watcher=False)
    first = start_watcher(farm, "alpha")  # alpha sees the digest first and fails for want
    farm.wait_for(  # of a working credential
        lambda: [s for s in finished_scans(farm) if s[1] == "alpha"],
        timeout=120,
        what="alpha's refused scan",
    )
    start_watcher(farm, "beta", "--reevaluate-seconds", "1")
    scans = farm.wait_for(
        lambda: (s := finished_scans(farm)) and any(r[1] == "beta" for r in s) and s,
        timeout=120,
        what="the scan in beta",
    )
    assert [(s[1], s[2]) for s in scans] == [("alpha", "refused"), ("beta", "succeeded")], scans
    assert scans[1][3] == f"{NS}/regcred ({host})"
    assert first.proc is not None and first.proc.poll() is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_watcher_stops_cleanly_on_a_signal(
    farm: Farm, sim: sim_fixtures.SimCluster, signum: signal.Signals
) -> None:
    Workloads(sim).deployment(NS, "web", "registry.example.com/team/app:1", 2)
    farm.start(workers=0, watcher=False)
    process = start_watcher(farm, "alpha")
    farm.wait_for(lambda: len(inventory(farm, "alpha")) == 2, timeout=60, what="inventory")
    assert process.proc is not None
    process.proc.send_signal(signum)
    assert process.proc.wait(30) == 0
    assert "stopped watching cluster alpha" in process.output()


def start_watcher(farm: Farm, cluster: str, *extra: str) -> WatcherProcess:
    """``scanqueue watch --cluster CLUSTER EXTRA...`` as a subprocess, stopped with the farm."""
    assert farm.config_path is not None
    log = farm.directory / f"watcher-{cluster}-{len(farm.watchers)}.log"
    process = _Watcher(farm.config_path, log, [cluster], list(extra)).start()
    farm.watchers.append(process)
    return process


class _Watcher(WatcherProcess):
    def __init__(self, config_path: Path, log: Path, clusters: list[str], extra: list[str]):
        super().__init__(config_path, log, clusters, log_level="INFO")
        self.extra = extra

    def argv(self) -> list[str]:
        return [*super().argv(), *self.extra]


def _redis_dump(url: str) -> str:
    client = redis.Redis.from_url(url)
    parts: list[bytes] = []
    for key in client.scan_iter("*"):
        kind = client.type(key)
        if kind == b"string":
            parts.append(client.get(key) or b"")
        elif kind == b"list":
            for raw in client.lrange(key, 0, -1):
                parts.append(raw)
                parts.append(_body(raw))
        elif kind == b"hash":
            parts.extend(v for kv in client.hgetall(key).items() for v in kv)
        elif kind == b"zset":
            parts.extend(m for m, _ in client.zrange(key, 0, -1, withscores=True))
        elif kind == b"set":
            parts.extend(client.smembers(key))
    client.close()
    return b"\n".join(parts).decode(errors="replace")


def _body(raw: bytes) -> bytes:
    import json

    try:
        return base64.b64decode(json.loads(raw)["body"])
    except (ValueError, KeyError, TypeError):
        return b""
