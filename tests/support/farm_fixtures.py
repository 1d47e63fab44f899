"""The whole farm for end-to-end tests: settings file, watcher and worker processes.

``farm`` gives a ``Farm`` bound to the test's Redis, fresh Postgres database,
private registry and emulator; ``farm.start()`` runs the real ``scanqueue
watch`` and ``celery -A workers.app worker -B`` as subprocesses, and the test
tears both down. Timings are short (collect every 0.3 s, Job deadline 8 s).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import psycopg
import pytest

from scanqueue import processes, roles
from tests.support import services, sim_fixtures
from tests.support.worker_fixtures import WorkerProcess

SCAN_NAMESPACE = "scanqueue-scans"


def write_settings(
    path: Path,
    *,
    database_url: str,
    redis_url: str,
    clusters: Sequence[tuple[str, Path]],
    insecure: Sequence[str],
    scan: dict[str, Any] | None = None,
    cluster_options: dict[str, Any] | None = None,
    rescan: dict[str, Any] | None = None,
) -> Path:
    """A scanqueue.toml for tests: short timings, the given clusters (name, kubeconfig);
    ``rescan``: the [rescan] section (rescans from stored SBOMs), if any."""
    values: dict[str, Any] = {
        "rescan_interval_seconds": 3600,
        "job_deadline_seconds": 8,
        "job_ttl_seconds": 120,
        "collect_interval_seconds": 0.3,
        "sweep_interval_seconds": 1.0,
        "sweep_margin_seconds": 2,
        "inflight_ttl_seconds": 120,
        "soft_time_limit_seconds": 20,
        "hard_time_limit_seconds": 25,
        "registry_timeout_seconds": 5.0,
        **(scan or {}),
    }
    lines = [
        "[database]",
        f'url = "{database_url}"',
        "[broker]",
        f'url = "{redis_url}"',
        "visibility_timeout_seconds = 30",
        "[scan]",
    ]
    for key, value in values.items():
        lines.append(f"{key} = {_toml(value)}")
    lines.append(f"insecure_registries = {_toml(list(insecure))}")
    if rescan:
        lines += ["[rescan]", *(f"{k} = {_toml(v)}" for k, v in rescan.items())]
    for name, kubeconfig in clusters:
        lines += [
            "[[clusters]]",
            f'name = "{name}"',
            f'kubeconfig = "{kubeconfig}"',
            f'scan_namespace = "{SCAN_NAMESPACE}"',
            *(
                f"{k} = {_toml(v)}"
                for k, v in {"max_inflight": 20, **(cluster_options or {})}.items()
            ),
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


@dataclasses.dataclass
class WatcherProcess:
    """The real ``scanqueue watch`` (command line from ``scanqueue.roles``)."""

    config_path: Path
    log: Path
    clusters: Sequence[str]
    process: processes.Process | None = None
    log_level: str = "DEBUG"
    reevaluate_seconds: float | None = None  # None: the command's default (a minute)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return None if self.process is None else self.process.proc

    def argv(self) -> list[str]:
        return roles.watcher(log_level=self.log_level, clusters=self.clusters,
                             reevaluate_seconds=self.reevaluate_seconds)  # fmt: skip

    def start(self) -> Self:
        env = {**os.environ, "SCANQUEUE_CONFIG": str(self.config_path)}
        self.process = processes.Process("watcher", self.argv(), self.log, env=env).start()
        return self

    def stop(self) -> int:
        if self.process is None or self.process.proc is None:
            return 0
        self.process.stop(30)
        return int(self.process.proc.returncode)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


FLOWER_AUTH = "ops:flower-pw-3d1c"


@dataclasses.dataclass
class FlowerProcess:
    """Flower on the farm's broker, with basic auth, capturing task events from the start."""

    config_path: Path
    log: Path
    port: int = 0
    process: processes.Process | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return None if self.process is None else self.process.proc

    def start(self) -> Self:
        self.port = processes.free_port()
        env = {**os.environ, "SCANQUEUE_CONFIG": str(self.config_path),
               "FLOWER_BASIC_AUTH": FLOWER_AUTH}  # fmt: skip
        argv = roles.flower(address="127.0.0.1", port=self.port)
        self.process = process = processes.Process("flower", argv, self.log, env=env).start()
        process.wait_ready(lambda: self.get("/healthcheck") == 200, what="/healthcheck",
                           timeout=60)  # fmt: skip
        return self

    def get(self, path: str, *, auth: str | None = FLOWER_AUTH) -> int:
        return self.fetch(path, auth=auth)[0]

    def fetch(self, path: str, *, auth: str | None = FLOWER_AUTH) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if auth:
            token = base64.b64encode(auth.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status), response.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return int(e.code), ""
        except OSError:
            return 0, ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(20)


@dataclasses.dataclass
class Farm:
    """Handles to every real part of one end-to-end test."""

    directory: Path
    database_url: str
    redis_url: str
    registry: services.Registry
    clusters: dict[str, sim_fixtures.SimCluster]
    start_worker: Callable[..., WorkerProcess]
    insecure: list[str]
    scan: dict[str, Any] = dataclasses.field(default_factory=dict)
    cluster_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    rescan: dict[str, Any] = dataclasses.field(default_factory=dict)  # the [rescan] section
    reevaluate_seconds: float | None = None  # the watchers' --reevaluate-seconds
    watchers: list[WatcherProcess] = dataclasses.field(default_factory=list)
    workers: list[WorkerProcess] = dataclasses.field(default_factory=list)
    flower: FlowerProcess | None = None
    config_path: Path | None = None

    def settings_file(self) -> Path:
        self.config_path = write_settings(
            self.directory / "scanqueue.toml",
            database_url=self.database_url,
            redis_url=self.redis_url,
            clusters=[(name, sim.kubeconfig) for name, sim in self.clusters.items()],
            insecure=self.insecure,
            scan=self.scan,
            cluster_options=self.cluster_options,
            rescan=self.rescan,
        )
        return self.config_path

    def start(self, *, watcher: bool = True, workers: int = 1, flower: bool = False) -> Farm:
        path = self.settings_file()
        if flower:
            self.flower = FlowerProcess(path, self.directory / "flower.log").start()
        for sim in self.clusters.values():
            if sim.get("Namespace", None, SCAN_NAMESPACE) is None:
                sim.create(
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SCAN_NAMESPACE}}
                )
        queues = [f"scan.{name}" for name in self.clusters] + ["scanqueue.control"]
        if self.rescan.get("enabled"):
            queues.append("scanqueue.rescan")
        for i in range(workers):
            self.workers.append(self.start_worker(path, queues=queues, beat=(i == 0)))
        if watcher:
            self.start_watcher()
        return self

    def start_watcher(self) -> WatcherProcess:
        assert self.config_path is not None
        log = self.directory / f"watcher-{len(self.watchers)}.log"
        process = WatcherProcess(self.config_path, log, list(self.clusters),
                                 reevaluate_seconds=self.reevaluate_seconds).start()  # fmt: skip
        self.watchers.append(process)
        return process

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def scans(self) -> dict[str, tuple[Any, ...]]:
        """Scans by image repository: (status, mode, credential_source, error, findings)."""
        rows = self.query(
            """SELECT i.repository, s.status, s.mode, s.credential_source, s.error,
                      (SELECT count(*) FROM findings f WHERE f.scan_id = s.id)
                 FROM scans s JOIN images i ON i.digest = s.digest ORDER BY s.started_at"""
        )
        return {r[0]: r[1:] for r in rows}

    def wait_for(self, predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not reached within {timeout}s\n{self.logs_tail()}")
            time.sleep(0.2)

    def logs(self) -> str:
        parts = [w.output() for w in self.watchers]
        parts += [w.log.read_text(errors="replace") for w in self.workers]
        return "\n".join(parts)

    def logs_tail(self, lines: int = 60) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def stop(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        for worker in self.workers:
            worker.stop()
        if self.flower is not None:
            self.flower.stop()


@pytest.fixture
def farm(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    registry: services.Registry,
    sim: sim_fixtures.SimCluster,
    worker_factory: Callable[..., WorkerProcess],
) -> Iterator[Farm]:
    """One emulated cluster ``alpha`` and the farm around it (started by ``farm.start()``)."""
    handle = Farm(
        directory=tmp_path,
        database_url=database_url,
        redis_url=redis_url,
        registry=registry,
        clusters={"alpha": sim},
        start_worker=worker_factory,
        insecure=[registry.host],
    )
    try:
        yield handle
    finally:
        handle.stop()
