"""Helpers for the reliability suite: a farm with fast redelivery, recorders, and the leak check.

- ``reliable_farm``: the e2e ``Farm`` with timings that let a SIGKILLed
  worker's task come back within seconds (broker visibility timeout 9 s) and a
  watcher that serves its Prometheus metrics;
- ``durable_redis``: a private ``redis-server`` with ``appendonly yes`` and
  ``appendfsync always``, the persistence the farm needs (docs/reliability.md);
- ``RedisMonitor``: every command Redis executed (``MONITOR``), reconnecting
  across restarts, with the scan tasks published (decoded kombu messages);
- ``ObjectRecorder``: every object of a kind ever ADDED in the scan namespace,
  through a real watch, to prove "exactly one Job per (cluster, digest, attempt)";
- ``Canary`` and ``leak_places`` / ``assert_nowhere``: where a planted credential
  must never be found (logs, Redis, MONITOR, pg_dump, emulator objects,
  Flower's API, metrics of the watcher and of ``farm.worker(metrics=True)``);
- ``flower_factory`` (Flower with basic auth on the farm's broker) and
  ``hanging_server`` (accepts connections, never answers: a registry that hangs).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from scanqueue import processes, roles
from tests.support import services, sim_fixtures
from tests.support.farm_fixtures import SCAN_NAMESPACE, Farm, FlowerProcess, WatcherProcess
from tests.support.worker_fixtures import WorkerProcess

NS = "team-a"
FAST_REDELIVERY = {
    # job deadline < soft < hard < visibility timeout (config enforces the order)
    "job_deadline_seconds": 5,
    "soft_time_limit_seconds": 6,
    "hard_time_limit_seconds": 7,
    # far beyond the visibility timeout: a killed worker's suspended Job waits for its
    # redelivered task instead of being swept first (docs/reliability.md)
    "sweep_margin_seconds": 30,
}
VISIBILITY_TIMEOUT = 9


# ------------------------------------------------------------------ objects


@dataclasses.dataclass(frozen=True)
class Canary:
    """A credential planted in pull secrets; no output may ever contain it."""

    user: str
    password: str

    @classmethod
    def make(cls, label: str = "rel") -> Canary:
        return cls(f"canary-{label}", f"Canary-{label}-{os.urandom(6).hex()}-do-not-leak")

    @property
    def auth(self) -> str:
        return base64.b64encode(f"{self.user}:{self.password}".encode()).decode()

    def dockerconfig(self, host: str) -> dict[str, Any]:
        return dockerconfig(host, self.user, self.password)

    def needles(self) -> list[str]:
        """The password, its ``auth`` field, and the secret's data as base64 (both layers)."""
        return [self.password, self.auth]


def dockerconfig(host: str, user: str, password: str) -> dict[str, Any]:
    return dict(json.loads(services.dockerconfigjson(host, user, password)))


def namespace(name: str = NS) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def pull_secret(
    name: str,
    content: Mapping[str, Any] | bytes,
    *,
    ns: str = NS,
    type_: str = "kubernetes.io/dockerconfigjson",
    key: str = ".dockerconfigjson",
) -> dict[str, Any]:
    """A Secret as ``kubectl create secret docker-registry`` writes it (or anything else)."""
    raw = content if isinstance(content, bytes) else json.dumps(content).encode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": type_,
        "data": {key: base64.b64encode(raw).decode()},
    }


def pod(
    name: str,
    image: str,
    *,
    secrets: Sequence[str] = (),
    account: str = "default",
    ns: str = NS,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": account,
        "containers": [{"name": "app", "image": image}],
    }
    if secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": spec}  # fmt: skip


def leftovers(sim: Any) -> list[str]:
    """Scan Jobs and Secrets still in the scan namespace."""
    return [
        f"{kind} {o['metadata']['name']}"
        for kind in ("Job", "Secret")
        for o in sim.list(kind, SCAN_NAMESPACE)
    ]


def scan_rows(farm: Farm) -> list[tuple[Any, ...]]:
    """(digest, status, attempt, error, findings) of every scan, oldest first."""
    return farm.query(
        """SELECT s.digest, s.status, s.attempt, s.error,
                  (SELECT count(*) FROM findings f WHERE f.scan_id = s.id)
             FROM scans s ORDER BY s.started_at"""
    )


def wait_finished(farm: Farm, count: int, *, timeout: float = 90) -> list[tuple[Any, ...]]:
    """Wait until ``count`` scans exist and none is running; return ``scan_rows``."""
    return list(
        farm.wait_for(
            lambda: (
                (rows := scan_rows(farm))
                and len(rows) >= count
                and all(r[1] != "running" for r in rows)
                and rows
            ),
            timeout=timeout,
            what=f"{count} finished scan(s)",
        )
    )


# ---------------------------------------------------------------- recorders


class ObjectRecorder:
    """Every object of ``kind`` ADDED in ``namespace`` while it runs, seen through a real watch."""

    def __init__(self, sim: Any, kind: str, namespace: str = SCAN_NAMESPACE) -> None:
        self.added: list[dict[str, Any]] = []
        self.most_at_once = 0  # the most objects of ``kind`` that existed at the same time
        self._live: set[str] = set()
        self._stop = threading.Event()
        api = sim.batch() if kind == "Job" else sim.core()
        self._list = api.list_namespaced_job if kind == "Job" else api.list_namespaced_secret
        self._namespace = namespace
        self._version = self._list(namespace).metadata.resource_version
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from kubernetes import watch

        class RawWatch(watch.Watch):  # type: ignore[misc]
            """Events as dicts only: building the client's models costs some 5 ms an event,
            taken from the cores the farm and the emulator share (the pipeline bench)."""

            def get_return_type(self, func: Any) -> None:
                return None

        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a dropped watch resumes from the last version
                for event in RawWatch().stream(
                    self._list, self._namespace, resource_version=self._version,
                    timeout_seconds=1, _preload_content=False,
                ):  # fmt: skip
                    obj = event["raw_object"]
                    self._version = obj["metadata"]["resourceVersion"]
                    if event["type"] == "ADDED":
                        self.added.append(obj)
                        self._live.add(obj["metadata"]["name"])
                    elif event["type"] == "DELETED":
                        self._live.discard(obj["metadata"]["name"])
                    self.most_at_once = max(self.most_at_once, len(self._live))

    def names(self) -> list[str]:
        return [str(o["metadata"]["name"]) for o in self.added]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class RedisMonitor:
    """Every command Redis executes (``MONITOR``), kept as raw lines; survives restarts."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"MONITOR on {url} did not start")

    def _run(self) -> None:
        while not self._stop.is_set():
            client = redis.Redis.from_url(self.url, socket_timeout=0.5)
            try:
                with client.monitor() as monitor:
                    self._ready.set()
                    while not self._stop.is_set():
                        try:
                            raw = monitor.connection.read_response()
                        except redis.TimeoutError:
                            continue
                        if isinstance(raw, bytes):
                            self.lines.append(raw.decode(errors="replace"))
            except (redis.ConnectionError, OSError, AttributeError):
                # Redis restarting (connect again), or the connection closed by ``stop``
                time.sleep(0.2)
            finally:
                client.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def commands(self) -> list[list[str]]:
        """Each command as its arguments, unescaped as Redis escaped them for MONITOR."""
        return [[_unescape(a) for a in _ARG.findall(line)] for line in list(self.lines)]

    def messages(self) -> list[dict[str, Any]]:
        """Kombu messages pushed to any list, with their bodies decoded."""
        found = []
        for command in self.commands():
            if len(command) < 3 or command[0].upper() not in ("LPUSH", "RPUSH"):
                continue
            for value in command[2:]:
                try:
                    message = json.loads(value)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                body = message.get("body")
                props = message.get("properties") or {}
                if isinstance(body, str) and props.get("body_encoding") == "base64":
                    with contextlib.suppress(ValueError):
                        decoded = base64.b64decode(body).decode(errors="replace")
                        message["decoded_body"] = decoded
                found.append(message)
        return found

    def scan_tasks(self) -> list[tuple[str, str]]:
        """(task id, digest) of every ``scanqueue.scan`` message published, retries included."""
        tasks = []
        for message in self.messages():
            headers = message.get("headers") or {}
            if headers.get("task") != "scanqueue.scan":
                continue
            decoded = message.get("decoded_body") or "null"
            args, kwargs, _ = json.loads(decoded)
            request = kwargs.get("request") or (args[0] if args else {})
            tasks.append((str(headers.get("id")), str(request.get("digest"))))
        return tasks

    def text(self) -> str:
        """Everything seen, with decoded message bodies appended."""
        bodies = [m.get("decoded_body", "") for m in self.messages()]
        return "\n".join([*self.lines, *bodies])


_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", '"': '"', "\\": "\\"}


def _unescape(text: str) -> str:
    """Undo Redis's ``sdscatrepr`` quoting (``\\"``, ``\\n``, ``\\xHH``)."""
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "x" and i + 3 < len(text):
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
            out.extend(_ESCAPES.get(nxt, nxt).encode())
            i += 2
            continue
        out.extend(ch.encode())
        i += 1
    return out.decode(errors="replace")


def one_task_per_digest(tasks: Sequence[tuple[str, str]]) -> dict[str, set[str]]:
    """Digests published under more than one task id (empty when there is no duplicate)."""
    ids: dict[str, set[str]] = {}
    for task_id, digest in tasks:
        ids.setdefault(digest, set()).add(task_id)
    return {d: i for d, i in ids.items() if len(i) > 1}


# ------------------------------------------------------------------ services


@dataclasses.dataclass
class DurableRedis(services.RedisServer):
    """``redis-server`` with an append-only file fsynced on every write (survives SIGKILL)."""

    def argv(self) -> list[str]:
        argv = super().argv()
        at = argv.index("--appendonly")
        return [*argv[:at], "--appendonly", "yes", "--appendfsync", "always", *argv[at + 2 :]]

    def kill(self) -> None:
        """SIGKILL: no shutdown save; only what the append-only file holds survives."""
        if self.process is not None:
            self.process.kill(signal.SIGKILL)


class Flower(FlowerProcess):
    """Flower started on the farm's broker (basic auth); ``tasks()`` is its task API, as text."""

    def tasks(self) -> str:
        return self.text("/api/tasks")

    def text(self, path: str) -> str:
        status, body = self.fetch(path)
        if status != 200:
            raise AssertionError(f"flower {path}: HTTP {status}")
        return body


@dataclasses.dataclass
class MetricsWatcher(WatcherProcess):
    """The real ``scanqueue watch`` serving Prometheus metrics on ``metrics_port``."""

    metrics_port: int = 0
    reevaluate_seconds: float = 60.0

    def argv(self) -> list[str]:
        self.metrics_port = self.metrics_port or processes.free_port()
        return roles.watcher(log_level=self.log_level, clusters=self.clusters,
                             metrics_port=self.metrics_port,
                             reevaluate_seconds=self.reevaluate_seconds)  # fmt: skip

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return str(r.read().decode())
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@dataclasses.dataclass
class MetricsWorker(WorkerProcess):
    """A real ``celery worker`` serving its Prometheus metrics (``--metrics-port``)."""

    def start(self, timeout: float = 60) -> MetricsWorker:
        self.metrics_port = self.metrics_port or processes.free_port()
        self.name = self.name or f"sqm{os.getpid()}-{time.monotonic_ns() % 10**8}"
        super().start(timeout)
        return self

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            return str(r.read().decode())


@dataclasses.dataclass
class ReliableFarm(Farm):
    """The e2e farm with a short broker visibility timeout and a metrics-serving watcher."""

    visibility_timeout: int = VISIBILITY_TIMEOUT
    reevaluate_seconds: float = 60.0

    def settings_file(self) -> Path:
        path = super().settings_file()
        text = path.read_text()
        fixed = re.sub(
            r"visibility_timeout_seconds = \d+",
            f"visibility_timeout_seconds = {self.visibility_timeout}",
            text,
        )
        if fixed == text and f"= {self.visibility_timeout}" not in text:
            raise AssertionError("farm settings no longer set visibility_timeout_seconds")
        path.write_text(fixed)
        return path

    def start_watcher(self) -> MetricsWatcher:
        assert self.config_path is not None
        log = self.directory / f"watcher-{len(self.watchers)}.log"
        process = MetricsWatcher(
            self.config_path, log, list(self.clusters), reevaluate_seconds=self.reevaluate_seconds
        ).start()
        self.watchers.append(process)
        return process

    @property
    def sim(self) -> Any:
        return self.clusters["alpha"]

    def worker(self, *, beat: bool = True, metrics: bool = False) -> WorkerProcess:
        """Start one more worker on every queue (serving its metrics when ``metrics``)."""
        assert self.config_path is not None
        queues = [f"scan.{name}" for name in self.clusters] + ["scanqueue.control"]
        if metrics:
            log = self.directory / f"metrics-worker-{len(self.workers)}.log"
            started: WorkerProcess = MetricsWorker(self.config_path, queues, log, beat=beat)
            started.start()
        else:
            started = self.start_worker(self.config_path, queues=queues, beat=beat)
        self.workers.append(started)
        return started


# ------------------------------------------------------------------ the leak check


def leak_places(
    farm: Farm,
    *,
    monitor: RedisMonitor | None = None,
    flower: Flower | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every place a credential must never reach, as text; stops the farm first.

    Logs of every watcher and worker (tracebacks and exception texts included),
    every Redis key and value, the MONITOR stream with decoded task bodies,
    ``pg_dump`` of the database (scan errors included), every Job, Pod, Event
    and ConfigMap in each emulator, Flower's task API and the metrics of the
    watchers and of the workers started with ``metrics=True``.
    """
    places: dict[str, str] = dict(extra or {})
    if flower is not None:
        places["flower /api/tasks"] = flower.tasks()
        places["flower /api/workers"] = flower.text("/api/workers?refresh=1")
    for i, watcher in enumerate(farm.watchers):
        if isinstance(watcher, MetricsWatcher) and watcher.proc and watcher.proc.poll() is None:
            places[f"watcher {i} metrics"] = watcher.metrics()
    for i, worker in enumerate(farm.workers):
        if isinstance(worker, MetricsWorker) and worker.proc and worker.proc.poll() is None:
            places[f"worker {i} metrics"] = worker.metrics()
    farm.stop()
    if flower is not None:
        flower.stop()
        places["flower log"] = flower.log.read_text(errors="replace")
    places["worker and watcher logs"] = farm.logs()
    places["redis keys"] = redis_dump(farm.redis_url)
    if monitor is not None:
        monitor.stop()
        places["redis MONITOR (raw and decoded messages)"] = monitor.text()
    done = subprocess.run(
        [str(services._pg_bindir() / "pg_dump"), farm.database_url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    if "CREATE TABLE" not in done.stdout:
        raise AssertionError("pg_dump printed no schema; the dump did not really run")
    places["pg_dump"] = done.stdout
    for name, sim in farm.clusters.items():
        objects = [o for kind in ("Job", "Pod", "Event", "ConfigMap") for o in sim.list(kind)]
        places[f"Jobs, Pods, Events, ConfigMaps of {name}"] = json.dumps(objects)
    return places


def redis_dump(url: str) -> str:
    client = redis.Redis.from_url(url)
    dump: list[bytes] = []
    try:
        for key in client.scan_iter("*"):
            kind = client.type(key)
            dump.append(key)
            if kind == b"string":
                dump.append(client.get(key) or b"")
            elif kind == b"list":
                dump.extend(client.lrange(key, 0, -1))
            elif kind == b"hash":
                dump.extend(v for kv in client.hgetall(key).items() for v in kv)
            elif kind == b"zset":
                dump.extend(m for m, _ in client.zrange(key, 0, -1, withscores=True))
            elif kind == b"set":
                dump.extend(client.smembers(key))
    finally:
        client.close()
    text = b"\n".join(dump).decode(errors="replace")
    # kombu keeps message bodies base64-encoded: search them decoded too
    decoded = []
    for match in re.finditer(r'"body": "([A-Za-z0-9+/=]+)"', text):
        with contextlib.suppress(ValueError):
            decoded.append(base64.b64decode(match.group(1)).decode(errors="replace"))
    return "\n".join([text, *decoded])


def assert_nowhere(needles: Sequence[str], places: Mapping[str, str]) -> None:
    """Fail naming the place when any needle (a credential or its encodings) is found."""
    found = [place for place, text in places.items() for n in needles if n in text]
    assert not found, f"canary credential found in: {sorted(set(found))}"


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def reliable_farm(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    registry: services.Registry,
    sim: sim_fixtures.SimCluster,
    worker_factory: Callable[..., WorkerProcess],
) -> Iterator[ReliableFarm]:
    """Cluster ``alpha`` and the farm around it, with a 9 s broker visibility timeout."""
    handle = ReliableFarm(
        directory=tmp_path,
        database_url=database_url,
        redis_url=redis_url,
        registry=registry,
        clusters={"alpha": sim},
        start_worker=worker_factory,
        insecure=[registry.host],
        scan=dict(FAST_REDELIVERY),
    )
    sim.create(namespace())
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def durable_redis() -> Iterator[DurableRedis]:
    """A private Redis with appendfsync always, for restart tests (stopped after the test)."""
    with services.tempdir("sq-redis-aof-") as tmp:
        server = DurableRedis(tmp).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def flower_factory(tmp_path: Path) -> Iterator[Callable[[Path], Flower]]:
    """Start Flower for a farm's settings file; stopped after the test."""
    started: list[Flower] = []

    def start(config_path: Path) -> Flower:
        flower = Flower(config_path, tmp_path / f"flower-{len(started)}.log").start()
        started.append(flower)
        return flower

    yield start
    for flower in started:
        flower.stop()


@pytest.fixture
def hanging_server() -> Iterator[str]:
    """Accepts connections and never answers; closes them when the test ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()
