"""Rescans in a real worker process with the real Trivy, under faults.

- A worker SIGKILLed while its ``trivy sbom`` child runs: the rescan is planned again
  and completes, the killed row does not stay ``running``, and the killed task's late
  redelivery evaluates nothing a second time.
- Postgres restarted (``immediate``, as a crash) while ``trivy sbom`` runs: storing
  its result fails, the task retries, and the rescan is stored once when it is back.
- Redis (broker and locks) restarted while ``trivy sbom`` runs: stored once.
- The Trivy server's token (``rescan.trivy_server_token_file``, a server started with
  a token): it reaches the ``trivy`` child's environment and nothing else (no process's
  argv, no worker environment, log, metric or scan row); a wrong token ends the rescan
  with an error that names the server, not the token.

The moment is held from outside: the test takes the farm-wide lock a rescan takes
before running ``trivy sbom``, sees the worker try it (Redis MONITOR), pauses the Trivy
server (SIGSTOP), then lets the lock go: the worker's ``trivy sbom`` child starts and
waits on the paused server until the test is done with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from scanqueue import processes, sboms, store
from scanqueue.sim import trivydb
from scanqueue.store import sboms as stored_sboms
from tests.integration import test_rescans
from tests.support import farm_fixtures, services, trivy_fixtures
from tests.support import reliability_fixtures as rel
from tests.support.worker_fixtures import WorkerProcess

TOKEN = "trivy-token-" + secrets.token_hex(12)
DIGEST = test_rescans.DIGEST


@contextlib.contextmanager
def _seeded(tmp: Path, database_url: str, redis_url: str) -> Iterator[test_rescans.World]:
    """A digest that runs in a pod, scanned in full with its SBOM kept; a Trivy server that
    wants TOKEN."""
    handle = test_rescans.World(tmp, database_url, redis_url, token=TOKEN)
    try:
        handle.full_scan()
        with psycopg.connect(database_url, autocommit=True) as conn:
            store.record_containers(conn, [test_rescans._running(DIGEST, pod="p0")])
        yield handle
    finally:
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(handle.server.pid, signal.SIGCONT)  # type: ignore
        handle.close()


@pytest.fixture
def world(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[test_rescans.World]:
    with _seeded(tmp_path, database_url, redis_url) as handle:
        yield handle


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


def _worker(
    world: test_rescans.World, started: list[WorkerProcess], timeout: float = 5, **options: Any
) -> WorkerProcess:
    """A worker (embedded beat) on the rescan queue; ``timeout``: rescan.timeout_seconds,
    which also sets how long a rescan may stay queued or running before it counts as lost
    (3 times that)."""
    config = farm_fixtures.write_settings(
        world.tmp / "rescan.toml", database_url=world.database_url, redis_url=world.redis_url,
        clusters=[], insecure=[],
        rescan={**world.rescan_settings, "plan_interval_seconds": 0.5, "timeout_seconds": timeout},
    )  # fmt: skip
    log = world.tmp / f"worker-{len(started)}.log"
    worker = WorkerProcess(config, ["scanqueue.rescan"], log, beat=True, **options)
    started.append(worker)
    return worker.start()


def _wait(predicate: Callable[[], Any], *, timeout: float, what: str, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _tree(root: int) -> dict[int, bytes]:
    """The argv (NUL-separated) of ``root`` and of every process below it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found.add(child)
                frontier.append(child)
    argv = {}
    for pid in found:
        with contextlib.suppress(OSError):
            argv[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()
    return argv


def _trivy_sbom(worker: WorkerProcess) -> dict[int, bytes]:
    assert worker.proc is not None
    return {p: a for p, a in _tree(worker.proc.pid).items() if b"\0sbom\0" in a}


def _rescans(world: test_rescans.World, status: str = "") -> list[tuple[Any, ...]]:
    return world.query(
        """SELECT id, status, error FROM scans WHERE mode = 'sbom' AND (%s = '' OR status = %s)
            ORDER BY started_at, id""",
        status,
        status,
    )


@contextlib.contextmanager
def _held_in_trivy_sbom(
    world: test_rescans.World, worker: WorkerProcess
) -> Iterator[dict[int, bytes]]:
    """Hold the planned rescan inside its ``trivy sbom`` child (see the module docstring);
    yields the child's pid and argv. The server runs again on exit."""
    with psycopg.connect(world.database_url) as conn:
        kept = stored_sboms.get(conn, DIGEST)
    assert kept is not None
    document = sboms.unpack(kept.document, digest=DIGEST)
    key = "scanqueue:rescan-sbom:" + hashlib.sha256(document).hexdigest()
    lock = world.rescanner.redis.lock(key, timeout=60)
    assert lock.acquire(blocking=False)
    assert world.server is not None and world.server.pid is not None
    server = world.server.pid
    monitor = rel.RedisMonitor(world.redis_url)
    try:
        # the worker tries the lock: it is past reading the DB version, before trivy sbom
        _wait(lambda: any(c[:2] == ["SET", key] for c in monitor.commands()), timeout=60,
              what="the rescan waiting for its lock")  # fmt: skip
        os.kill(server, signal.SIGSTOP)
        lock.release()
        yield _wait(lambda: _trivy_sbom(worker), timeout=10, what="trivy sbom", poll=0.01)
    finally:
        monitor.stop()
        os.kill(server, signal.SIGCONT)


def test_a_worker_killed_in_trivy_sbom_leaves_no_running_row_and_the_rescan_completes(
    world: test_rescans.World, workers: list[WorkerProcess]
) -> None:
    first = _worker(world, workers)
    with _held_in_trivy_sbom(world, first) as children:
        [(killed, _, _)] = _rescans(world, "running")
        first.kill()  # SIGKILL, the whole worker: main process, pool child, its trivy
        for pid in children:
            _wait(lambda pid=pid: not Path(f"/proc/{pid}").exists(), timeout=10,
                  what=f"trivy {pid} gone with its worker")  # fmt: skip
    assert [s for _, s, _ in _rescans(world)] == ["running"]

    # the planner counts it lost after 3 x rescan.timeout_seconds and plans it again; the
    # killed task comes back later (the broker's visibility timeout, 45 s): it runs nothing
    second = _worker(world, workers, env={"SCANQUEUE_BROKER_VISIBILITY_TIMEOUT_SECONDS": "45"})
    lost = (killed, "failed", "rescan task lost (worker gone?); planned again")
    _wait(lambda: lost in _rescans(world), timeout=60, what="the killed rescan ended as lost")
    _wait(lambda: _rescans(world, "succeeded"), timeout=90, what="the rescan, planned again")
    _wait(lambda: "rescan already ended" in second.log.read_text(errors="replace"), timeout=90,
          what="the killed rescan's task redelivered")  # fmt: skip
    rows = _rescans(world)
    assert [s for _, s, _ in rows if s in ("pending", "running")] == [], rows
    assert [s for _, s, _ in rows].count("succeeded") == 1, rows
    assert lost in rows


def test_the_trivy_server_token_reaches_only_the_trivy_child_and_a_wrong_one_names_the_server(
    world: test_rescans.World, workers: list[WorkerProcess]
) -> None:
    port = processes.free_port()
    worker = _worker(world, workers, metrics_port=port)
    assert worker.proc is not None
    secret = TOKEN.encode()
    with _held_in_trivy_sbom(world, worker) as children:
        tree = _tree(worker.proc.pid)
        for pid in children:  # where it must be: the positive control of this search
            assert secret in Path(f"/proc/{pid}/environ").read_bytes()
        for pid, argv in tree.items():
            assert secret not in argv, argv
            if pid not in children:  # the worker's own processes
                with contextlib.suppress(OSError):
                    assert secret not in Path(f"/proc/{pid}/environ").read_bytes(), argv
    _wait(lambda: _rescans(world, "succeeded"), timeout=60, what="the rescan")
    metrics = _metrics_text(port)
    assert "scanqueue_rescans" in metrics
    rows = world.query("SELECT 1 FROM scans WHERE scans::text LIKE %s", f"%{TOKEN}%")
    assert [TOKEN in metrics, TOKEN in worker.log.read_text(errors="replace"), rows] == [
        False, False, []]  # fmt: skip

    # a wrong token: the next rescan (a newer DB) fails at once, naming the server
    wrong = "wrong-token-" + secrets.token_hex(12)
    Path(str(world.rescan_settings["trivy_server_token_file"])).write_text(wrong + "\n")
    newer = trivydb.load(trivy_fixtures.ADVISORIES)
    world.set_db(trivydb.AdvisoryFile(newer.advisories, updated_at="2026-06-01T00:00:00Z"))
    (_, _, error), *_ = _wait(lambda: _rescans(world, "failed"), timeout=60, what="a refusal")
    assert world.server is not None
    assert f"Trivy server {world.server.url} refused the token" in error, error
    assert "rescan.trivy_server_token_file" in error, error
    for text in (error, worker.log.read_text(errors="replace")):
        assert wrong not in text and TOKEN not in text
    assert TOKEN not in _metrics_text(port) and wrong not in _metrics_text(port)


def _metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def test_postgres_restarted_while_trivy_sbom_runs_stores_the_rescan_once(
    world: test_rescans.World,
    workers: list[WorkerProcess],
    postgres_server: services.PostgresServer,
) -> None:
    # retries back off 1, 2, 4, 8 s...: a window of 60 s before the row counts as lost
    worker = _worker(world, workers, timeout=20)
    try:
        with _held_in_trivy_sbom(world, worker):
            postgres_server.crash()  # while Trivy evaluates; committed rows survive
        # Trivy's result cannot be stored: the task is retried with backoff
        _wait(lambda: "rescan will be retried" in worker.log.read_text(errors="replace"),
              timeout=60, what="the rescan retried while Postgres is down")  # fmt: skip
    finally:
        postgres_server.start()
    retried = [ln for ln in worker.log.read_text(errors="replace").splitlines()
               if "rescan will be retried" in ln]  # fmt: skip
    assert "Postgres, in store.finish_scan" in retried[0], retried  # after Trivy's evaluation
    _wait(lambda: _rescans(world, "succeeded"), timeout=90, what="the rescan stored")
    rows = _rescans(world)
    assert [s for _, s, _ in rows] == ["succeeded"], rows  # one row, stored once
    assert worker.proc is not None and worker.proc.poll() is None  # the worker lived through it


def test_redis_restarted_while_trivy_sbom_runs_stores_the_rescan_once(
    tmp_path: Path,
    database_url: str,
    durable_redis: rel.DurableRedis,
    workers: list[WorkerProcess],
) -> None:
    """The broker and the rescan lock's Redis restarts (append-only file: nothing acknowledged
    is lost) while Trivy evaluates. Celery terminates a late-acked task on a lost broker
    connection, so that rescan dies holding its lock (identical SBOMs wait for it to expire,
    timeout + 30 s); the planner counts it lost and plans it again. In the end: one
    evaluation stored, no row left running, the others ended as lost, and the terminated
    task's redelivery (after the visibility timeout) runs nothing."""
    with _seeded(tmp_path, database_url, durable_redis.url) as world:
        worker = _worker(world, workers)
        with _held_in_trivy_sbom(world, worker):
            durable_redis.restart()
        _wait(lambda: _rescans(world, "succeeded"), timeout=60, what="the rescan stored")
        time.sleep(35)  # past the broker's visibility timeout (30 s): any redelivery is done
        rows = _rescans(world)
        assert [s for _, s, _ in rows].count("succeeded") == 1, rows
        lost = (None, "failed", "rescan task lost (worker gone?); planned again")
        assert all(s == "succeeded" or (None, s, e) == lost for _, s, e in rows), rows
        assert worker.proc is not None and worker.proc.poll() is None
