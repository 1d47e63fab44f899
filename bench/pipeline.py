"""Pipeline throughput: scans per second end to end, watcher + N worker processes + emulator.

Each run: a fresh database, an empty Redis and a new emulator holding
``digests`` Deployments (two pods each, one image digest each, every pod
naming a pull secret) whose scan Jobs finish at once and print the recorded
212-finding report. Then real ``celery -A workers.app worker -c 1`` processes
(the first with beat, which sends the collect passes) and a real ``scanqueue
watch`` process run until every digest has a stored, succeeded scan.

Reported per worker count: scans per second from the first scan started to
the last report stored (the farm's steady rate), and from the watcher's start
(process start-up and the first list included), and the API requests per scan
of the whole farm as it runs (collect passes every 0.2 s find fewer Jobs each
than ``bench.api_cost``'s single pass). The emulator and Postgres run on the
same two cores as the farm: they are part of what is measured.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench import _world
from tests.support import farm_fixtures, services, worker_fixtures

REPEATS = _world.env_int("PIPELINE_REPEATS", 3)
TARGET = 50.0  # scans per second with instant Jobs on 2 cores


def _one_run(
    svc: _world.Services, directory: Path, *, digests: int, workers: int, timeout: float
) -> dict[str, float]:
    svc.flush_redis()
    database_url = svc.database()
    shape = _world.Shape(pods=digests * 2, workloads=digests, digests=digests)
    with _world.emulator(directory, validate=False) as sim:
        _world.populate(sim, shape)
        _world.wait_for(
            lambda: _world.running_pods(sim) >= shape.pods, timeout=timeout, what="pods running"
        )
        sim.reset_counts()
        config_path = farm_fixtures.write_settings(
            directory / "scanqueue.toml",
            database_url=database_url,
            redis_url=svc.redis_url,
            clusters=[(_world.CLUSTER, directory / "kubeconfig")],
            insecure=[],
            scan={"verify_with_registry": False, "collect_interval_seconds": 0.2,
                  "sweep_interval_seconds": 30.0, "job_deadline_seconds": 15,
                  "job_ttl_seconds": 600, "sweep_margin_seconds": 120},
        )  # fmt: skip
        started: list[worker_fixtures.WorkerProcess] = []
        watcher: farm_fixtures.WatcherProcess | None = None
        try:
            for i in range(workers):
                worker = worker_fixtures.WorkerProcess(
                    config_path,
                    [f"scan.{_world.CLUSTER}", "scanqueue.control"],
                    directory / f"worker-{i}.log",
                    beat=(i == 0),
                )
                started.append(worker)
                worker.start()
            begin = datetime.now(UTC)
            watcher = farm_fixtures.WatcherProcess(
                config_path, directory / "watcher.log", [_world.CLUSTER]
            ).start()

            def done() -> tuple[Any, ...] | None:
                with psycopg.connect(database_url, autocommit=True) as conn:
                    row = conn.execute(
                        """SELECT count(*) FILTER (WHERE status = 'succeeded'),
                                  count(*) FILTER (WHERE status NOT IN ('succeeded', 'running',
                                                                       'pending')),
                                  min(started_at), max(finished_at)
                             FROM scans"""
                    ).fetchone()
                assert row is not None
                if row[1]:
                    raise RuntimeError(f"{row[1]} scans failed; see {directory}")
                return tuple(row) if row[0] >= digests else None

            try:
                _, _, first_started, last_stored = _world.wait_for(
                    done, timeout=timeout, what=f"{digests} scans stored"
                )
            except (TimeoutError, RuntimeError) as e:
                tail = "\n".join(w.tail(15) for w in started)
                raise RuntimeError(f"{e}\n{tail}\n{watcher.output()[-2000:]}") from None
            counts = sim.request_counts()
            jobs = counts.get(("create", "jobs"), 0)
            # every request of the farm, the watcher's pod list and watch included
            requests = sum(counts.values())
        finally:
            if watcher is not None:
                watcher.stop()
            for worker in started:
                worker.stop()
    if jobs != digests:
        raise RuntimeError(f"{jobs} scan Jobs created for {digests} digests")
    steady = (last_stored - first_started).total_seconds()
    end_to_end = (last_stored - begin).total_seconds()
    return {
        "scans_per_second": digests / steady,
        "end_to_end_scans_per_second": digests / end_to_end,
        "seconds": steady,
        "end_to_end_seconds": end_to_end,
        "api_requests_per_scan": requests / digests,
    }


def run(*, digests: int = 300, workers: tuple[int, ...] = (1, 2), repeats: int = REPEATS,
        timeout: float = 180.0) -> dict[str, Any]:  # fmt: skip
    result: dict[str, Any] = {
        "digests": digests,
        "report_findings": 212,
        "target": f">= {TARGET:g} scans/s with instant Jobs on 2 cores (2 worker processes)",
    }
    with _world.running_services() as svc:
        runs: dict[int, list[dict[str, float]]] = {n: [] for n in workers}
        for _ in range(repeats):  # worker counts interleaved: drift hits both alike
            for n in workers:
                with services.tempdir("sq-bench-pipeline-") as directory:
                    runs[n].append(_one_run(svc, directory, digests=digests, workers=n,
                                            timeout=timeout))  # fmt: skip
                time.sleep(0.5)
    for n, measured in runs.items():
        result[f"{n}_worker"] = {
            key: _world.summary([m[key] for m in measured]) for key in measured[0]
        }
        print(
            f"  {n} worker process(es): {result[f'{n}_worker']['scans_per_second']['median']} "
            f"scans/s steady, {result[f'{n}_worker']['end_to_end_scans_per_second']['median']} "
            "from watcher start",
            flush=True,
        )
    best = max(workers)
    result["met"] = result[f"{best}_worker"]["scans_per_second"]["median"] >= TARGET
    return result
