"""1,000 pods created and deleted in a loop: the inventory matches the cluster, memory stays flat.

The real ``scanqueue watch`` process watches an emulated cluster while the
test creates 1,000 pods and deletes them again, round after round (a bounded
number of rounds, not a bounded time: no timing in assertions). Afterwards
the live inventory in Postgres is exactly the pods the cluster runs, and the
watcher's resident memory after the last round is within a fixed margin of
what it was after the first (a leak of per-pod state would grow it by every
round's 1,000 pods).
"""

from __future__ import annotations

from pathlib import Path

import redis

from tests.support import reliability_fixtures as rel

PODS = 1000
ROUNDS = 4
DIGESTS = 10


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _live(farm: rel.ReliableFarm) -> set[tuple[str, str]]:
    rows = farm.query(
        """SELECT c.namespace, c.pod FROM containers c JOIN clusters cl ON cl.id = c.cluster_id
            WHERE cl.name = 'alpha' AND c.gone_at IS NULL"""
    )
    return {(r[0], r[1]) for r in rows}


def _running(sim: object, names: set[str]) -> bool:
    pods = sim.list("Pod", rel.NS)  # type: ignore[attr-defined]
    return {p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"} == names


def test_a_thousand_pods_churning_leave_an_exact_inventory_and_flat_watcher_memory(
    reliable_farm: rel.ReliableFarm,
) -> None:
    farm, sim = reliable_farm, reliable_farm.sim
    images = [f"registry.example.com/team/churn-{i}:1" for i in range(DIGESTS)]
    for i, image in enumerate(images):
        sim.set_digest(image, "sha256:" + f"{i + 1:064x}")
    farm.start(workers=0)  # the watcher alone: tasks wait in Redis
    watcher = farm.watchers[0]
    assert watcher.proc is not None

    def round_trip(n: int) -> None:
        names = {f"churn-{n}-{i}" for i in range(PODS)}
        for i, name in enumerate(sorted(names)):
            sim.create(rel.pod(name, images[i % DIGESTS]))
        farm.wait_for(lambda: _live(farm) == {(rel.NS, p) for p in names}, timeout=120,
                      what=f"round {n}: {PODS} pods in the inventory")  # fmt: skip
        for name in names:
            sim.delete("Pod", rel.NS, name)
        farm.wait_for(lambda: not _live(farm), timeout=120,
                      what=f"round {n}: every pod gone from the inventory")  # fmt: skip

    round_trip(0)
    after_first = _rss_kib(watcher.proc.pid)
    for n in range(1, ROUNDS):
        round_trip(n)
    after_last = _rss_kib(watcher.proc.pid)

    keep = {f"stays-{i}" for i in range(300)}
    for i, name in enumerate(sorted(keep)):
        sim.create(rel.pod(name, images[i % DIGESTS]))
    farm.wait_for(lambda: _running(sim, keep), timeout=60, what="300 pods running")
    farm.wait_for(
        lambda: _live(farm) == {(rel.NS, p) for p in keep},
        timeout=60,
        what="the inventory equal to the pods the cluster runs",
    )
    assert watcher.proc.poll() is None
    # one task per digest however many pods came and went
    client = redis.Redis.from_url(farm.redis_url)
    assert client.llen("scan.alpha") == DIGESTS
    client.close()
    print(f"watcher RSS after round 1: {after_first} KiB, after round {ROUNDS}: {after_last} KiB")
    # measured: ~2 MiB of allocator noise over 3 rounds; a watcher that kept what it
    # learnt about each deleted pod (requests, owners, decisions) grows by that x 3,000
    assert after_last - after_first < 16 * 1024, (after_first, after_last)
