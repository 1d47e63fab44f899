"""Dedupe: scan Jobs per cluster, scanqueue against the peers' one Job per workload.

A generated cluster (default 1,000 pods in 200 Deployments running 50 image
digests, every pod naming a pull secret) is watched by a ``ClusterWatcher``;
each published task is then submitted and collected in this process with the
workers' code (``scans.submit``/``scans.collect``) against an emulator whose
scan Jobs finish at once. Jobs are counted at the emulator (``create jobs``).
The peers (one scan per workload) would create one Job per Deployment.
"""

from __future__ import annotations

from typing import Any

from bench import _world

ROUNDS = _world.env_int("DEDUPE_ROUNDS", 3)


def run(*, pods: int = 1000, workloads: int = 200, digests: int = 50,
        rounds: int = ROUNDS) -> dict[str, Any]:  # fmt: skip
    shape = _world.Shape(pods=pods, workloads=workloads, digests=digests)
    passes = []
    with _world.running_services() as svc:
        for _ in range(rounds):
            one = _world.watch_and_scan(svc, shape)
            if one.jobs_created != one.digests or one.tasks_published != one.digests:
                raise RuntimeError(
                    f"dedupe broken: {one.digests} digests, {one.tasks_published} tasks, "
                    f"{one.jobs_created} scan Jobs"
                )
            if one.scans_stored != one.digests:
                raise RuntimeError(f"{one.scans_stored} of {one.digests} scans stored")
            passes.append(one)
    last = passes[-1]
    result = {
        "cluster": {"pods": pods, "workloads": workloads, "digests": last.digests},
        "scan_jobs": {
            "scanqueue": last.jobs_created,
            "one_per_workload": workloads,
            "ratio": round(workloads / last.jobs_created, 1),
        },
        "tasks_published": last.tasks_published,
        "target": "scan Jobs = unique digests",
        "met": all(p.jobs_created == p.digests for p in passes),
        "watch_seconds": _world.summary([p.watch_seconds for p in passes]),
        "scan_seconds": _world.summary([p.scan_seconds for p in passes]),
    }
    print(
        f"{pods} pods / {workloads} workloads / {last.digests} digests: "
        f"{last.jobs_created} scan Jobs (peers: {workloads}), "
        f"{last.tasks_published} tasks published",
        flush=True,
    )
    return result
