"""What the benchmarks share: private services, a generated cluster, statistics.

Not a benchmark itself (the leading underscore keeps ``python -m bench`` from
running it). Everything it starts listens on 127.0.0.1 and is stopped by the
context manager that started it. It must never talk to anything but loopback.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import redis

from scanqueue import config, dedupe, discovery, kube, publish, scans, store
from scanqueue.sim import emulator as emulator_mod
from tests.support import services

TRIVY = Path(__file__).parents[1] / "tests" / "data" / "trivy"
REPORT = TRIVY / "python-debian-12-bom-crlf.json"  # 212 findings
SCAN_NAMESPACE = "scanqueue-scans"
REGISTRY = "registry.example.com"  # never contacted: the emulator scans without pulling
PULL_SECRET = "regcred"
CLUSTER = "bench"


def summary(values: Sequence[float], *, digits: int = 2) -> dict[str, Any]:
    """Median, min, max and relative spread ((max - min) / median) of repeated runs."""
    median = statistics.median(values)
    spread = (max(values) - min(values)) / median if median else 0.0
    return {
        "median": round(median, digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "spread_pct": round(spread * 100, 1),
        "runs": len(values),
    }


def env_int(name: str, default: int) -> int:
    """An integer size from ``BENCH_<NAME>`` (for quick runs), else ``default``."""
    return int(os.environ.get(f"BENCH_{name}", str(default)))


# ---------------------------------------------------------------- services


@dataclasses.dataclass
class Services:
    """A private Redis and PostgreSQL; ``database()`` gives a fresh migrated database."""

    redis: services.RedisServer
    postgres: services.PostgresServer
    template: str = ""
    _count: int = 0

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def flush_redis(self) -> None:
        client = redis.Redis.from_url(self.redis.url)
        try:
            client.flushall()
        finally:
            client.close()

    def database(self) -> str:
        if not self.template:
            self.template = "bench_template"
            url = self.postgres.create_database(self.template)
            with store.connect(url) as conn:
                store.migrate(conn)
                conn.commit()
        self._count += 1
        return self.postgres.create_database(f"bench_{self._count}", template=self.template)


@contextlib.contextmanager
def running_services() -> Iterator[Services]:
    with services.tempdir("sq-bench-redis-") as rdir, services.tempdir("sq-bench-pg-") as pdir:
        r = services.RedisServer(rdir).start()
        try:
            pg = services.PostgresServer(pdir).start()
            try:
                yield Services(r, pg)
            finally:
                pg.stop("immediate")
        finally:
            r.stop()


# ---------------------------------------------------------------- the cluster


@dataclasses.dataclass(frozen=True)
class Shape:
    """A generated cluster: ``pods`` pods in ``workloads`` Deployments running ``digests`` images,
    spread over ``namespaces`` namespaces; every pod names a pull secret."""

    pods: int
    workloads: int
    digests: int
    namespaces: int = 10

    def image(self, i: int) -> str:
        return f"{REGISTRY}/bench/app-{i % self.digests:03d}:1"


@contextlib.contextmanager
def emulator(directory: Path, *, validate: bool = True) -> Iterator[emulator_mod.Emulator]:
    """An emulator whose scan Jobs complete at once with the recorded 212-finding report."""
    sim = emulator_mod.Emulator(real_pull=False, validate=validate, name=CLUSTER).start()
    try:
        sim.kubeconfig(directory / "kubeconfig")
        yield sim
    finally:
        sim.stop()


def populate(sim: emulator_mod.Emulator, shape: Shape, *, report: Path = REPORT) -> set[str]:
    """Create namespaces, pull secrets, Deployments, ReplicaSets and pods; return the digests.

    Pods are created in the emulator directly (no HTTP), so this costs nothing at the API
    counters; the emulator's kubelet runs them and reports an ``imageID`` for each.
    """
    from tests.support.watcher_fixtures import Workloads

    workloads = Workloads(sim)  # type: ignore[arg-type]  # duck-typed: create/get
    auth = base64.b64encode(b"bench:not-a-real-password").decode()
    for n in range(shape.namespaces):
        workloads.pull_secret(f"team-{n:02d}", PULL_SECRET, {REGISTRY: {"auth": auth}})
    if sim.get("Namespace", None, SCAN_NAMESPACE) is None:
        sim.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SCAN_NAMESPACE}})
    per, extra = divmod(shape.pods, shape.workloads)
    for w in range(shape.workloads):
        replicas = per + (1 if w < extra else 0)
        workloads.deployment(
            f"team-{w % shape.namespaces:02d}", f"app-{w:04d}", shape.image(w), replicas,
            pull_secrets=[PULL_SECRET],
        )  # fmt: skip
    digests = {sim.digest_of(shape.image(i)) for i in range(shape.digests)}
    for i in range(shape.digests):
        sim.set_report(shape.image(i), report)
    return digests


def wait_for(
    predicate: Callable[[], Any], *, timeout: float, what: str, every: float = 0.02
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout:g}s")
        time.sleep(every)


def running_pods(sim: emulator_mod.Emulator) -> int:
    return sum(
        1
        for p in sim.list("Pod")
        if (p.get("status") or {}).get("phase") == "Running"
        and not p["metadata"]["namespace"].startswith("scanqueue")
    )


# ---------------------------------------------------------------- settings


def cluster_settings(directory: Path, **options: Any) -> config.ClusterSettings:
    return config.ClusterSettings(
        name=CLUSTER,
        kubeconfig=str(directory / "kubeconfig"),
        scan_namespace=SCAN_NAMESPACE,
        **options,
    )


def settings(
    directory: Path, *, database_url: str, redis_url: str, max_inflight: int = 100
) -> config.Settings:
    return config.Settings(
        database=config.DatabaseSettings(url=database_url),
        broker=config.BrokerSettings(url=redis_url),
        scan=config.ScanSettings(
            verify_with_registry=False, collect_interval_seconds=0.2, sweep_interval_seconds=30
        ),
        clusters=(cluster_settings(directory, max_inflight=max_inflight),),
    )


# ---------------------------------------------------------------- queue and scans


def queued_requests(redis_url: str) -> list[discovery.ScanRequest]:
    """The scan requests waiting on ``scan.bench``, decoded as a worker would, oldest first."""
    raw = redis.Redis.from_url(redis_url)
    try:
        messages = raw.lrange(publish.queue_name(CLUSTER), 0, -1)
    finally:
        raw.close()
    out = []
    for message in reversed(messages):
        body = json.loads(message)["body"]
        _, kwargs, _ = json.loads(base64.b64decode(body))
        out.append(discovery.from_payload(kwargs["request"]))
    return out


def queue_length(redis_url: str) -> int:
    raw = redis.Redis.from_url(redis_url)
    try:
        return int(raw.llen(publish.queue_name(CLUSTER)))
    finally:
        raw.close()


@contextlib.contextmanager
def scan_context(
    directory: Path, *, database_url: str, redis_url: str, max_inflight: int = 100
) -> Iterator[scans.ScanContext]:
    """The orchestration's collaborators, in this process, as a worker builds them."""
    full = settings(
        directory, database_url=database_url, redis_url=redis_url, max_inflight=max_inflight
    )
    cluster = full.clusters[0]
    api = kube.api_client(cluster)
    pool = store.pool(database_url)
    client = dedupe.client(redis_url)
    try:
        yield scans.ScanContext(
            settings=full, cluster=cluster, api=api, db=pool, redis=client, registry=None
        )
    finally:
        client.close()
        pool.close()
        api.close()


# ---------------------------------------------------------------- one farm pass, in process


@dataclasses.dataclass(frozen=True)
class FarmPass:
    """What one watch-then-scan pass over a generated cluster did."""

    digests: int  # distinct digests running in the cluster
    tasks_published: int
    scans_stored: int
    jobs_created: int  # scan Jobs created, counted at the emulator
    watch_requests: dict[str, int]  # "verb resource" -> requests, while watching
    submit_requests: dict[str, int]  # ... while submitting every task
    collect_requests: dict[str, int]  # ... while collecting every Job
    watch_seconds: float  # watcher start to every task published
    scan_seconds: float  # first submit to last report stored


def _counts(sim: emulator_mod.Emulator) -> dict[str, int]:
    counts = sim.request_counts()
    sim.reset_counts()
    return {f"{verb} {resource}": n for (verb, resource), n in sorted(counts.items())}


def watch_and_scan(
    svc: Services,
    shape: Shape,
    *,
    timeout: float = 120.0,
    database_url: str | None = None,
    sim: emulator_mod.Emulator | None = None,
) -> FarmPass:
    """Populate an emulator, run a ``ClusterWatcher`` until its tasks are published, then run
    every task's submit and the collect passes in this process (a worker's code, no Celery).
    ``database_url`` and ``sim``: the caller's, kept for what it measures next (else new)."""
    import threading

    from scanqueue import watcher

    svc.flush_redis()
    database_url = database_url or svc.database()
    with services.tempdir("sq-bench-farm-") as directory, contextlib.ExitStack() as stack:
        if sim is None:
            sim = stack.enter_context(emulator(directory))
        else:
            sim.kubeconfig(directory / "kubeconfig")
        digests = populate(sim, shape)
        wait_for(lambda: running_pods(sim) >= shape.pods, timeout=timeout, what="pods running")
        sim.reset_counts()
        full = settings(directory, database_url=database_url, redis_url=svc.redis_url)
        api = kube.api_client(full.clusters[0])
        client = dedupe.client(svc.redis_url)
        pool = store.pool(database_url)
        publisher = publish.Publisher(svc.redis_url)
        stop = threading.Event()
        options = watcher.WatchOptions(flush_interval_seconds=0.05, watch_timeout_seconds=30)
        w = watcher.ClusterWatcher(
            cluster=full.clusters[0], scan=full.scan, api=api, redis_client=client,
            publisher=publisher, pool=pool, stop=stop, options=options,
        )  # fmt: skip
        started = time.perf_counter()
        thread = w.start()
        try:
            wait_for(
                lambda: w.idle() and queue_length(svc.redis_url) >= len(digests),
                timeout=timeout,
                what=f"{len(digests)} scan tasks published",
            )
            watch_seconds = time.perf_counter() - started
        finally:
            stop.set()
            thread.join(30)
            publisher.close()
            client.close()
            pool.close()
            api.close()
        watch_requests = _counts(sim)
        requests = queued_requests(svc.redis_url)
        with scan_context(directory, database_url=database_url, redis_url=svc.redis_url) as ctx:
            started = time.perf_counter()
            for request in requests:
                result = scans.submit(ctx, request)
                if result.outcome != "submitted":
                    raise RuntimeError(f"scan {request.scan_id}: {result.outcome} {result.detail}")
            submit_requests = _counts(sim)
            # Collect once every Job is done, so that passes finding nothing to collect
            # (which depend on timing) are not counted against the scans.
            wait_for(
                lambda: all(
                    any(c.get("type") == "Complete" and c.get("status") == "True"
                        for c in (j.get("status") or {}).get("conditions") or [])
                    for j in sim.list("Job", SCAN_NAMESPACE)
                ),
                timeout=timeout,
                what="every scan Job complete",
            )  # fmt: skip
            stored = _collect_all(ctx, {r.scan_id for r in requests}, timeout=timeout)
            scan_seconds = time.perf_counter() - started
            collect_requests = _counts(sim)
        jobs = submit_requests.get("create jobs", 0) + collect_requests.get("create jobs", 0)
        return FarmPass(
            digests=len(digests),
            tasks_published=len(requests),
            scans_stored=stored,
            jobs_created=jobs,
            watch_requests=watch_requests,
            submit_requests=submit_requests,
            collect_requests=collect_requests,
            watch_seconds=watch_seconds,
            scan_seconds=scan_seconds,
        )


def _collect_all(ctx: scans.ScanContext, wanted: set[str], *, timeout: float) -> int:
    done: set[str] = set()
    deadline = time.monotonic() + timeout
    while done != wanted:
        for result in scans.collect(ctx):
            if result.outcome != "succeeded":
                raise RuntimeError(f"scan {result.scan_id}: {result.outcome} {result.detail}")
            done.add(result.scan_id)
        if done == wanted:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(wanted - done)} scans not collected within {timeout:g}s")
        time.sleep(0.01)
    return len(done)


# ---------------------------------------------------------------- CPU per process


_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int, *, children: bool = True) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of ``pid``, with those of its reaped children unless not
    ``children``), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    # fields[1] = ppid; [11..14] = utime, stime, cutime, cstime (clock ticks)
    return int(fields[1]), sum(int(f) for f in fields[11 : 15 if children else 13]) / _TICKS


def own_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` itself (all its threads), not of its children."""
    found = _stat(pid, children=False)
    return 0.0 if found is None else found[1]


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used by ``root`` and every descendant: live ones, and reaped ones through
    their parents' children times. Processes that exited but were not reaped yet are missed."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None:
                parents[int(entry)], cpu[int(entry)] = found
    total, members = 0.0, {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in members and pid not in members:
                members.add(pid)
                grew = True
    for pid in members:
        total += cpu.get(pid, 0.0)
    return total


def process_cpu_seconds() -> float:
    """CPU seconds of this process, every thread (those that ended too), no children."""
    times = os.times()
    return times.user + times.system


def postmaster_pid(postgres: services.PostgresServer) -> int:
    return int((postgres.data / "postmaster.pid").read_text().split()[0])
