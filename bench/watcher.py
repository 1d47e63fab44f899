"""Watcher: time and peak RSS of ``scanqueue watch`` from start to every task published.

One emulator holds ``pods`` running pods (``workloads`` Deployments over
``digests`` images in 20 namespaces). Each repeat starts a real ``scanqueue
watch`` process on an empty Redis and a fresh database and measures, from its
start (interpreter start-up included): the time until every digest's scan task
is on the queue, the time until the inventory holds every container, and the
process's peak resident set (``VmHWM`` from /proc, read before it is stopped).
Nothing consumes the queue: no worker runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psycopg

from bench import _world
from scanqueue import processes, roles
from tests.support import farm_fixtures, services

REPEATS = _world.env_int("WATCHER_REPEATS", 3)
TARGET_SECONDS = 5.0
TARGET_MB = 150.0


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def _containers(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM containers WHERE gone_at IS NULL").fetchone()
    return int(row[0]) if row else 0


def _one_run(
    svc: _world.Services, directory: Path, *, pods: int, digests: int, timeout: float
) -> dict[str, float]:
    svc.flush_redis()
    database_url = svc.database()
    config_path = farm_fixtures.write_settings(
        directory / "scanqueue.toml",
        database_url=database_url,
        redis_url=svc.redis_url,
        clusters=[(_world.CLUSTER, directory / "kubeconfig")],
        insecure=[],
        scan={"verify_with_registry": False},
    )
    started = time.perf_counter()
    watcher = processes.Process(
        "watcher",
        roles.watcher(log_level="WARNING", clusters=[_world.CLUSTER]),
        directory / "watcher.log",
        env={**os.environ, "SCANQUEUE_CONFIG": str(config_path)},
    ).start()
    proc = watcher.proc
    assert proc is not None
    try:
        published = inventory = 0.0
        deadline = started + timeout
        while not (published and inventory):
            now = time.perf_counter()
            if proc.poll() is not None:
                tail = (directory / "watcher.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"scanqueue watch exited {proc.returncode}:\n{tail}")
            if now > deadline:
                raise TimeoutError(
                    f"watcher: {_world.queue_length(svc.redis_url)}/{digests} tasks, "
                    f"{_containers(database_url)}/{pods} containers after {timeout:g}s"
                )
            if not published and _world.queue_length(svc.redis_url) >= digests:
                published = now - started
            if not inventory and _containers(database_url) >= pods:
                inventory = now - started
            time.sleep(0.02)
        peak = _peak_rss_mb(proc.pid)
        queued = _world.queue_length(svc.redis_url)
    finally:
        watcher.stop(30)
    if queued != digests:
        raise RuntimeError(f"{queued} tasks published for {digests} digests")
    return {"published_seconds": published, "inventory_seconds": inventory, "peak_rss_mb": peak}


def run(*, pods: int = 10_000, workloads: int = 500, digests: int = 100, repeats: int = REPEATS,
        timeout: float = 120.0) -> dict[str, Any]:  # fmt: skip
    shape = _world.Shape(pods=pods, workloads=workloads, digests=digests, namespaces=20)
    runs: list[dict[str, float]] = []
    with (
        _world.running_services() as svc,
        services.tempdir("sq-bench-watch-") as directory,
        _world.emulator(directory, validate=False) as sim,
    ):
        if True:  # the emulator is shared by every repeat
            started = time.perf_counter()
            _world.populate(sim, shape)
            _world.wait_for(
                lambda: _world.running_pods(sim) >= pods, timeout=300, what=f"{pods} pods running"
            )
            populate_seconds = time.perf_counter() - started
            for _ in range(repeats):
                runs.append(_one_run(svc, directory, pods=pods, digests=digests, timeout=timeout))
    result: dict[str, Any] = {
        "pods": pods,
        "workloads": workloads,
        "digests": digests,
        "emulator_populate_seconds": round(populate_seconds, 1),
    }
    for key in runs[0]:
        result[key] = _world.summary([r[key] for r in runs])
    result["target"] = (
        f"{pods} pods listed and published in < {TARGET_SECONDS:g} s, < {TARGET_MB:g} MB RSS"
    )
    result["met"] = (
        result["published_seconds"]["median"] < TARGET_SECONDS
        and result["peak_rss_mb"]["median"] < TARGET_MB
    )
    print(
        f"  {pods} pods: tasks published after {result['published_seconds']['median']} s, "
        f"inventory after {result['inventory_seconds']['median']} s, "
        f"peak RSS {result['peak_rss_mb']['median']} MB",
        flush=True,
    )
    return result
