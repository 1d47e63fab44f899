"""API cost: Kubernetes API requests per scan (orchestration only), by verb, at the emulator.

Same pass as ``bench.dedupe`` (watcher, then every task submitted and its Job
collected with the workers' code), on a cluster where every pod names a pull
secret, so each scan reads a Secret and creates a credential Secret. Counted
at the emulator between submit and the last collect; the watcher's own list
and watch are reported apart (they do not grow with scans).
"""

from __future__ import annotations

import collections
from typing import Any

from bench import _world

ROUNDS = _world.env_int("API_COST_ROUNDS", 3)
TARGET = 8  # API requests per scan at most


def run(*, pods: int = 400, workloads: int = 100, digests: int = 50,
        rounds: int = ROUNDS) -> dict[str, Any]:  # fmt: skip
    shape = _world.Shape(pods=pods, workloads=workloads, digests=digests)
    per_scan: list[float] = []
    by_verb: collections.Counter[str] = collections.Counter()
    submit: collections.Counter[str] = collections.Counter()
    collect: collections.Counter[str] = collections.Counter()
    watch: collections.Counter[str] = collections.Counter()
    scans = 0
    with _world.running_services() as svc:
        for _ in range(rounds):
            one = _world.watch_and_scan(svc, shape)
            total = sum(one.submit_requests.values()) + sum(one.collect_requests.values())
            per_scan.append(total / one.scans_stored)
            submit.update(one.submit_requests)
            collect.update(one.collect_requests)
            watch.update(one.watch_requests)
            scans += one.scans_stored
    for counts in (submit, collect):
        for key, n in counts.items():
            by_verb[key.split(" ", 1)[0]] += n
    result = {
        "scans": scans,
        "requests_per_scan": _world.summary(per_scan),
        "per_scan_by_verb": {k: round(v / scans, 2) for k, v in sorted(by_verb.items())},
        "submit_per_scan": {k: round(v / scans, 2) for k, v in sorted(submit.items())},
        "collect_per_scan": {k: round(v / scans, 2) for k, v in sorted(collect.items())},
        "watcher_requests_per_pass": {k: round(v / rounds, 1) for k, v in sorted(watch.items())},
        "target": f"<= {TARGET} API requests per scan",
        "met": max(per_scan) <= TARGET,
    }
    print(f"{result['requests_per_scan']['median']} API requests per scan: "
          f"{result['per_scan_by_verb']}", flush=True)  # fmt: skip
    return result
