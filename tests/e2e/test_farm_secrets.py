"""The farm's own passwords, planted and searched for: they stay in their files.

A Postgres that demands a password (scram-sha-256 for the farm's role) and a
Redis that demands one (``requirepass``), the passwords in two files named by
``database.password_file`` and ``broker.password_file``; the real watcher,
worker (with its pool and embedded beat) and Flower scan an image in the
emulator. Then every place a password could leak is searched: each farm
process's environment and command line (``/proc/PID/environ``, ``cmdline``,
children included), the logs, the metrics pages, Flower's pages and API, and
what the farm left in Redis. A control run with a wrong password file proves
the passwords are really what lets the farm in (and that the refusal names
the file, not its content).
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from scanqueue import processes, roles
from tests.support import farm_fixtures, services, sim_fixtures
from tests.support.worker_fixtures import WorkerProcess

DB_PASSWORD = "Db-Pw-4c1d9e7a-farm-secret"
REDIS_PASSWORD = "Redis-Pw-8b2f6a31-farm-secret"
PLANTED = (DB_PASSWORD, REDIS_PASSWORD)
ROLE = "sq_farm"
REPORTS = Path(__file__).parents[1] / "data" / "trivy"
NS = "team-a"


class PasswordRedis(services.RedisServer):
    """redis-server whose password is in its config file (not its argv)."""

    def argv(self) -> list[str]:
        conf = self.directory / "redis.conf"
        conf.write_text(f'requirepass "{REDIS_PASSWORD}"\n')
        return [super().argv()[0], str(conf), *super().argv()[1:]]


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A password-only Postgres role and database, a password Redis, the two password files."""
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    with services.tempdir("sq-pg-secrets-") as pg_dir:  # the postgres user must reach it
        yield from _secured(tmp_path, pg_dir, redis_dir)


def _secured(tmp_path: Path, pg_dir: Path, redis_dir: Path) -> Iterator[dict[str, Any]]:
    postgres = services.PostgresServer(pg_dir).start()
    redis_server = PasswordRedis(redis_dir).start()
    try:
        with psycopg.connect(postgres.url(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{DB_PASSWORD}'")
            conn.execute(f"CREATE DATABASE scanqueue OWNER {ROLE}")
        # the farm's role may log in with its password only (trust stays for the test's admin)
        hba = postgres.data / "pg_hba.conf"
        hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        postgres._run(str(services._pg_bindir() / "pg_ctl"), "-D", str(postgres.data), "reload")
        secrets = tmp_path / "secrets"
        secrets.mkdir(mode=0o700)
        (secrets / "db").write_text(DB_PASSWORD + "\n")
        (secrets / "redis").write_text(REDIS_PASSWORD + "\n")
        yield {
            "database_url": f"postgresql://{ROLE}@127.0.0.1:{postgres.port}/scanqueue",
            "redis_url": redis_server.url,
            "db_file": secrets / "db",
            "redis_file": secrets / "redis",
            "postgres": postgres,
            "redis": redis_server,
        }
    finally:
        redis_server.stop()
        postgres.stop("immediate")


def _settings(farm: farm_fixtures.Farm, secured: dict[str, Any], db_file: Path) -> Path:
    path = farm.settings_file()
    text = path.read_text()
    text = text.replace("[database]\n", f'[database]\npassword_file = "{db_file}"\n', 1)
    text = text.replace("[broker]\n", f'[broker]\npassword_file = "{secured["redis_file"]}"\n', 1)
    path.write_text(text)
    return path


def _scanqueue(config_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SCANQUEUE_CONFIG": str(config_path)}
    return subprocess.run(
        [roles.python(), "-m", "scanqueue.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _tree(root: int) -> list[int]:
    """``root`` and every descendant, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _process_texts(pids: list[int]) -> dict[str, bytes]:
    out = {}
    for pid in pids:
        for name in ("environ", "cmdline"):
            try:
                out[f"/proc/{pid}/{name}"] = (Path("/proc") / str(pid) / name).read_bytes()
            except OSError:
                continue  # gone meanwhile
    return out


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode(errors="replace")


def _redis_dump(url: str) -> str:
    client = redis.Redis.from_url(url, password=REDIS_PASSWORD, decode_responses=False)
    parts = []
    try:
        for key in client.scan_iter(count=500):
            kind = client.type(key)
            if kind == b"string":
                parts.append(repr(client.get(key)))
            elif kind == b"list":
                parts.append(repr(client.lrange(key, 0, -1)))
            elif kind == b"hash":
                parts.append(repr(client.hgetall(key)))
            elif kind == b"set":
                parts.append(repr(client.smembers(key)))
            elif kind == b"zset":
                parts.append(repr(client.zrange(key, 0, -1)))
            parts.append(repr(key))
    finally:
        client.close()
    return "\n".join(parts)


class MetricsWatcher(farm_fixtures.WatcherProcess):
    """The watcher with its metrics server on, as deploy/ runs it."""

    metrics_port: int = 0

    def argv(self) -> list[str]:
        return roles.watcher(
            log_level=self.log_level, clusters=self.clusters, metrics_port=self.metrics_port
        )


def test_a_wrong_password_file_is_refused_and_never_shown(
    tmp_path: Path, secured: dict[str, Any], registry: services.Registry, sim: Any
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("Wrong-Pw-0a9b8c7d\n")
    farm = farm_fixtures.Farm(
        directory=tmp_path, database_url=secured["database_url"], redis_url=secured["redis_url"],
        registry=registry, clusters={"alpha": sim}, start_worker=lambda *a, **k: None,
        insecure=[registry.host],
    )  # fmt: skip
    refused = _scanqueue(_settings(farm, secured, wrong), "migrate")
    assert refused.returncode != 0
    text = refused.stdout + refused.stderr
    assert "password authentication failed" in text, text
    assert "Wrong-Pw-0a9b8c7d" not in text
    accepted = _scanqueue(_settings(farm, secured, secured["db_file"]), "migrate")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


def test_the_farm_runs_on_password_files_and_the_passwords_appear_nowhere(
    tmp_path: Path,
    secured: dict[str, Any],
    registry: services.Registry,
    sim: sim_fixtures.SimCluster,
) -> None:
    farm = farm_fixtures.Farm(
        directory=tmp_path, database_url=secured["database_url"], redis_url=secured["redis_url"],
        registry=registry, clusters={"alpha": sim}, start_worker=lambda *a, **k: None,
        insecure=[registry.host],
    )  # fmt: skip
    config_path = _settings(farm, secured, secured["db_file"])
    migrated = _scanqueue(config_path, "migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr

    sim.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    sim.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "scanqueue-scans"}})
    digest = registry.push("team/public-ish", "1", content="farm secrets e2e")
    image = f"{registry.host}/team/public-ish:1"
    sim.set_digest(image, digest)
    sim.set_report(digest, REPORTS / "node-alpine-3.19.json")

    worker = WorkerProcess(
        config_path, ["scan.alpha", "scanqueue.control"], tmp_path / "worker.log",
        concurrency=2, beat=True, metrics_port=processes.free_port(),
    ).start()  # fmt: skip
    watcher = MetricsWatcher(config_path, tmp_path / "watcher.log", ["alpha"])
    watcher.metrics_port = processes.free_port()
    watcher.start()
    flower = farm_fixtures.FlowerProcess(config_path, tmp_path / "flower.log").start()
    try:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "app", "namespace": NS},
            "spec": {"containers": [{"name": "app", "image": image}]},
        }
        sim.create(pod)

        def finished() -> Any:
            with psycopg.connect(
                secured["database_url"], password=DB_PASSWORD, autocommit=True
            ) as conn:
                rows = conn.execute("SELECT status FROM scans").fetchall()
            return rows and all(r[0] != "running" for r in rows) and rows

        rows = farm.wait_for(finished, timeout=120, what="the scan finished")
        assert [r[0] for r in rows] == ["succeeded"], (rows, worker.tail())

        # every place the passwords could have gone
        places: dict[str, bytes] = {}
        for name, process in (("worker", worker.proc), ("watcher", watcher.proc),
                              ("flower", flower.proc)):  # fmt: skip
            assert process is not None and process.poll() is None, name
            pids = _tree(process.pid)
            if name == "worker":
                assert len(pids) >= 3, "the worker's pool (and beat) are searched too"
            places.update(_process_texts(pids))
        for log in (worker.log, watcher.log, flower.log):
            places[str(log)] = log.read_bytes()
        places["watcher metrics"] = _get(
            f"http://127.0.0.1:{watcher.metrics_port}/metrics"
        ).encode()
        places["worker metrics"] = _get(f"http://127.0.0.1:{worker.metrics_port}/metrics").encode()
        for path in ("/", "/workers", "/tasks", "/broker", "/api/workers", "/api/tasks",
                     "/api/queues/length"):  # fmt: skip
            status, body = flower.fetch(path)
            assert status == 200, (path, status)
            places[f"flower {path}"] = body.encode()
        places["redis keys and values"] = _redis_dump(secured["redis_url"]).encode()

        assert "scan.alpha" in places["flower /api/queues/length"].decode(), "Flower reads Redis"
        for where, content in places.items():
            for password in PLANTED:
                assert password.encode() not in content, f"{password[:6]}... found in {where}"
        # and the search would have found them: the environ of a process started with one
        probe = subprocess.Popen(["sleep", "30"], env={**os.environ, "X": DB_PASSWORD})
        try:
            # until it has exec'd, the forked child's /proc environ is still ours
            cmdline = Path(f"/proc/{probe.pid}/cmdline")
            deadline = time.monotonic() + 10
            while cmdline.read_bytes() != b"sleep\x0030\x00" and time.monotonic() < deadline:
                time.sleep(0.01)
            assert DB_PASSWORD.encode() in _process_texts([probe.pid])[f"/proc/{probe.pid}/environ"]
        finally:
            probe.kill()
            probe.wait()
    finally:
        flower.stop()
        watcher.stop()
        worker.stop()
