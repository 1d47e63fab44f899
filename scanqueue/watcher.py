"""The watch loop: every running container recorded, one scan task per digest across the farm.

One ``ClusterWatcher`` per cluster. For each scope (all namespaces, or each
included namespace) a stream thread lists pods, then watches from the list's
resourceVersion (bookmarks requested), resumes from the last resourceVersion
it saw when the connection drops, re-lists on ``410 Gone``, and backs off with
jitter on errors and API 429/5xx. Stream threads only update an in-memory
picture of the cluster (pod -> its containers' ScanRequests); a flusher
thread turns that picture into side effects in batches:

- the inventory (``store``): upserts and forgotten pods every ``flush_interval``
  or ``flush_rows``, and after a full (re)list the whole cluster at once;
- the scan tasks: digests not decided yet go through ``dedupe.claim`` (fresh?
  failed here? in flight elsewhere?) and only a claimed digest is published
  (``publish``), once for the whole farm. Every ``reevaluate_interval`` all
  digests the cluster runs are checked again, so rescans and another
  cluster's failures are picked up.

What it must never do: publish a task for a digest another watcher holds, let
one slow or broken cluster block another (each has its own threads and
queue), or carry a secret's value anywhere (ScanRequests name secrets only).
A bad pod or a failing service is logged and retried; the loop keeps running
until ``stop`` is set.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from scanqueue import config, dedupe, discovery, errors, jobwatch, kube, metrics, publish, store

log = logging.getLogger(__name__)

PodKey = tuple[str, str]  # (namespace, name)
Running = tuple[discovery.ScanRequest, ...]  # containers of a pod that have a digest
Scope = str | None  # a namespace, or None for all namespaces
FRESH_HINT_SECONDS = 600  # Postgres said fresh: Redis remembers it this long at most
POOL_WAIT_SECONDS = 5.0  # a flush waits this long for a Postgres connection, then retries later


@dataclasses.dataclass(frozen=True)
class WatchOptions:
    """How the watch loop paces itself. Defaults suit production; tests shorten them."""

    flush_interval_seconds: float = 1.0  # inventory and tasks are written this often
    flush_rows: int = 500  # ...or as soon as this many container rows wait
    reevaluate_interval_seconds: float = 60.0  # known digests re-checked for rescans/turns
    watch_timeout_seconds: int = 240  # server-side timeoutSeconds of one watch request
    backoff_initial_seconds: float = 0.5  # first wait after an error
    backoff_max_seconds: float = 30.0  # longest wait between attempts
    owner_reads: int = 8  # ReplicaSets/Jobs read at once after a list


class Backoff:
    """Jittered exponential backoff; a server's ``Retry-After`` is a lower bound."""

    def __init__(self, initial: float, maximum: float, *, rng: random.Random | None = None) -> None:
        self._initial, self._maximum = initial, maximum
        self._failures = 0
        self._rng = rng or random.Random()

    def next(self, hint: float | None = None) -> float:
        """The wait before the next attempt (grows with each call until ``reset``)."""
        ceiling = min(self._maximum, self._initial * (2**self._failures))
        self._failures += 1
        delay = ceiling * self._rng.uniform(0.5, 1.0)
        return float(max(delay, hint or 0.0))

    def reset(self) -> None:
        self._failures = 0


@dataclasses.dataclass
class _Pod:
    seen_at: datetime
    requests: tuple[discovery.ScanRequest, ...]  # containers that run (have a digest)


class ClusterWatcher:
    """Watches one cluster until ``stop`` is set; ``run`` blocks, ``start`` runs it in a thread.

    Collaborators are passed in: an API client for the cluster, a Redis client
    (dedupe), a ``publish.Publisher`` and a Postgres pool (``store.pool``).
    Stream threads only read the API; the flusher thread writes to Redis and
    the broker, and its one inventory thread to Postgres.
    """

    def __init__(
        self,
        *,
        cluster: config.ClusterSettings,
        scan: config.ScanSettings,
        api: kube.ApiClient,
        redis_client: redis.Redis,
        publisher: publish.Publisher,
        pool: Any,
        stop: threading.Event,
        options: WatchOptions = WatchOptions(),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.cluster = cluster
        self.name = cluster.name
        self._scan = scan
        self._api = api
        self._redis = redis_client
        self._publisher = publisher
        self._pool = pool
        self._stop = stop
        self._options = options
        self._clock = clock
        self._owners = discovery.OwnerResolver(self._read_owner)
        self._scopes: tuple[Scope, ...] = tuple(cluster.namespaces) or (None,)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # The picture of the cluster, updated by the stream threads.
        self._pods: dict[PodKey, _Pod] = {}
        self._listed: set[Scope] = set()
        # Work waiting for the flusher.
        self._replace_pending = False
        self._upserts: dict[PodKey, _Pod] = {}
        self._forgets: dict[PodKey, datetime] = {}
        self._checks: dict[str, discovery.ScanRequest] = {}
        self._oldest_pending: float | None = None
        self._decided: set[str] = set()  # digests claimed or found settled since the last pass
        # (namespace, pull secrets, service account) seen running each digest: a new one may
        # bring the credential that failed before, so its "failed here" wait ends at once
        self._pullers: dict[str, set[tuple[str, tuple[str, ...], str]]] = {}
        self._new_pullers: set[str] = set()  # digests with a new one, for the flusher
        self._flushing = False
        self._decide_backoff = Backoff(options.backoff_initial_seconds, options.backoff_max_seconds)
        self._decide_after = 0.0  # monotonic time before which digests are not decided
        self._writer = concurrent.futures.ThreadPoolExecutor(1, f"inventory-{self.name}")
        self._threads: list[threading.Thread] = []
        self.ready = threading.Event()  # set after the first full inventory was written
        self._known_hits = metrics.DEDUPE_HITS.labels(self.name, "known")
        self._published = metrics.TASKS_PUBLISHED.labels(self.name)

    # ------------------------------------------------------------------ running

    def start(self) -> threading.Thread:
        """Run the watcher in a background thread; returns it (join it after setting stop)."""
        thread = threading.Thread(target=self.run, name=f"watch-{self.name}", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        """Start a stream thread per scope and flush until ``stop`` is set; flush once more."""
        log.info("watching cluster %s (%s)", self.name, self._describe_scopes(), extra=self._ctx())
        for scope in self._scopes:
            thread = threading.Thread(
                target=self._stream,
                args=(scope,),
                name=f"watch-{self.name}-{scope or 'all'}",
                daemon=True,  # may sit in a blocking read; it ends at the next event/timeout
            )
            thread.start()
            self._threads.append(thread)
        last_pass = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(self._options.flush_interval_seconds)
            self._wake.clear()
            if time.monotonic() - last_pass >= self._options.reevaluate_interval_seconds:
                self.reevaluate()
                last_pass = time.monotonic()
            self._flush_safely()
        self._flush_safely()
        self._writer.shutdown()
        log.info("stopped watching cluster %s", self.name, extra=self._ctx())

    def _describe_scopes(self) -> str:
        if self._scopes == (None,):
            return "all namespaces"
        return "namespaces " + ", ".join(s for s in self._scopes if s)

    # ----------------------------------------------------------------- streaming

    def _stream(self, scope: Scope) -> None:
        """List, then watch ``scope`` until stop; resume, re-list on 410, back off on errors."""
        backoff = Backoff(self._options.backoff_initial_seconds, self._options.backoff_max_seconds)
        version: str | None = None
        where = scope or "all namespaces"
        bookmarks = metrics.WATCH_EVENTS.labels(self.name, "BOOKMARK")
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist(scope)
                    backoff.reset()
                for kind, obj in kube.watch_pods(
                    api=self._api,
                    namespace=scope,
                    resource_version=version,
                    timeout_seconds=self._options.watch_timeout_seconds,
                ):
                    if self._stop.is_set():
                        return
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if kind == "BOOKMARK":  # only a newer resourceVersion to resume from
                        bookmarks.inc()
                    else:
                        self._apply(kind, obj)
                backoff.reset()
                metrics.WATCH_RESTARTS.labels(self.name, "timeout").inc()
            except kube.Gone:
                metrics.WATCH_GONE.labels(self.name).inc()
                metrics.WATCH_RESTARTS.labels(self.name, "gone").inc()
                log.info("watch of %s in %s: 410 Gone; listing again", where, self.name)
                version = None
                self._stop.wait(backoff.next() / 4)  # a re-list is due, but not in a hot loop
            except errors.ScanqueueError as e:
                metrics.WATCH_RESTARTS.labels(self.name, "error").inc()
                delay = backoff.next(e.delay if isinstance(e, errors.TemporaryError) else None)
                level = logging.WARNING if isinstance(e, errors.TemporaryError) else logging.ERROR
                log.log(level, "watch of %s in %s: %s; again in %.1fs", where, self.name, e, delay)
                self._stop.wait(delay)
            except Exception:  # a bug must not end the watch of a cluster
                metrics.WATCH_RESTARTS.labels(self.name, "error").inc()
                delay = backoff.next()
                log.exception("watch of %s in %s failed; again in %.1fs", where, self.name, delay)
                version = None
                self._stop.wait(delay)

    def _read_owner(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            return kube.read_owner(api=self._api, kind=kind, namespace=namespace, name=name)
        except kube.NotFound:
            return None
        except errors.PermanentError as e:
            log.warning("cluster %s: cannot read %s %s/%s: %s", self.name, kind, namespace, name, e)
            return None

    def _observe(self, pod: Mapping[str, Any]) -> tuple[PodKey, _Pod | None, Running]:
        """What ``pod`` means now: its key, its inventory entry (None: nothing runs in it
        any more) and its containers that have a digest (a finished pod's too: they ran)."""
        metadata = pod.get("metadata") or {}
        key = (str(metadata.get("namespace", "")), str(metadata.get("name", "")))
        found = discovery.requests(pod, cluster=self.name, owners=self._owners)
        running = tuple(r for r in found if r.digest is not None)
        if not running or discovery.terminal(pod):
            return key, None, running
        return key, _Pod(self._clock(), running), running

    def _apply(self, kind: str, pod: Mapping[str, Any]) -> None:
        """Fold one watch event into the picture of the cluster."""
        metrics.WATCH_EVENTS.labels(self.name, kind).inc()
        if not discovery.selected(pod, self.cluster):
            return
        if kind == "DELETED":
            metadata = pod.get("metadata") or {}
            key = (str(metadata.get("namespace", "")), str(metadata.get("name", "")))
            with self._lock:
                self._remove(key, self._clock())
            self._wake_if_full()
            return
        try:
            key, observed, running = self._observe(pod)
        except errors.ScanqueueError as e:
            log.warning("cluster %s: skipping a pod: %s", self.name, e)
            return
        with self._lock:
            if observed is None:
                self._remove(key, self._clock())
            else:
                previous = self._pods.get(key)
                self._pods[key] = observed
                if previous is None or previous.requests != observed.requests:
                    self._forgets.pop(key, None)
                    self._upserts[key] = observed
                    self._mark_pending()
            self._want(running)
        self._wake_if_full()

    def _remove(self, key: PodKey, at: datetime) -> None:
        """Caller holds the lock."""
        self._upserts.pop(key, None)
        if self._pods.pop(key, None) is not None:
            self._forgets[key] = at
            self._mark_pending()

    def _want(self, running: Running) -> None:
        """Queue the digests not decided yet for the flusher. Caller holds the lock."""
        for request in running:
            digest = request.digest
            if digest is None:
                continue
            if self._new_puller(digest, request):
                self._checks[digest] = request  # scanned with the new pull secrets
                self._decided.discard(digest)
                self._mark_pending()
            elif digest in self._decided:
                self._known_hits.inc()
            elif digest not in self._checks:
                self._checks[digest] = request
                self._mark_pending()

    def _new_puller(self, digest: str, request: discovery.ScanRequest) -> bool:
        """Record who runs ``digest``; True when a known digest gets new pull secrets."""
        puller = (request.namespace, request.pull_secrets, request.service_account)
        seen = self._pullers.setdefault(digest, set())
        if puller in seen:
            return False
        seen.add(puller)
        if len(seen) == 1:
            return False  # the first sighting: nothing changed
        self._new_pullers.add(digest)
        return True

    def _mark_pending(self) -> None:
        if self._oldest_pending is None:
            self._oldest_pending = time.monotonic()

    def _wake_if_full(self) -> None:
        if len(self._upserts) >= self._options.flush_rows or self._replace_pending:
            self._wake.set()

    def _relist(self, scope: Scope) -> str:
        """List ``scope`` and replace its picture; return the resourceVersion to watch from.

        Pages are folded into the (small) picture as they arrive, so the raw pod
        dicts of a whole cluster are never held at once.
        """
        fresh: dict[PodKey, _Pod] = {}
        wanted: list[Running] = []
        listed = metrics.WATCH_EVENTS.labels(self.name, "LISTED")
        version = ""
        for items, page_version in kube.list_pod_pages(api=self._api, namespace=scope):
            version = page_version
            self._prefetch_owners(items)
            for pod in items:
                listed.inc()
                if not discovery.selected(pod, self.cluster):
                    continue
                try:
                    key, observed, running = self._observe(pod)
                except errors.ScanqueueError as e:
                    log.warning("cluster %s: skipping a pod: %s", self.name, e)
                    continue
                if observed is not None:
                    fresh[key] = observed
                wanted.append(running)
            del items
        with self._lock:
            for key in [k for k in self._pods if scope is None or k[0] == scope]:
                del self._pods[key]
            self._pods.update(fresh)
            self._listed.add(scope)
            self._replace_pending = True
            self._mark_pending()
            for running in wanted:
                self._want(running)
        self._wake.set()
        return version

    def _prefetch_owners(self, items: Sequence[Mapping[str, Any]]) -> None:
        """Read the owners a list needs (ReplicaSets without a template hash, Jobs) in parallel."""
        needed: dict[tuple[str, str, str], Mapping[str, Any]] = {}
        for pod in items:
            key = self._owners.unresolved(pod)
            if key is not None and key not in needed:
                needed[key] = pod
        if len(needed) < 2:
            return
        workers = max(1, min(self._options.owner_reads, len(needed)))
        with concurrent.futures.ThreadPoolExecutor(workers, f"owners-{self.name}") as pool:
            for future in [pool.submit(self._owners.workload, p) for p in needed.values()]:
                with contextlib.suppress(errors.ScanqueueError):
                    future.result()

    def reevaluate(self) -> None:
        """Check every digest the cluster runs again at the next flush (rescans, turns)."""
        with self._lock:
            pullers: dict[str, set[tuple[str, tuple[str, ...], str]]] = {}
            for entry in self._pods.values():
                for request in entry.requests:
                    if request.digest is not None and request.digest not in self._checks:
                        self._checks[request.digest] = request
                    if request.digest is not None:  # only what runs now: bounded memory
                        pullers.setdefault(request.digest, set()).add(
                            (request.namespace, request.pull_secrets, request.service_account)
                        )
            self._pullers = pullers
            self._decided.clear()
            self._mark_pending()
        self._wake.set()

    # ------------------------------------------------------------------ flushing

    def _flush_safely(self) -> None:
        try:
            self.flush()
        except Exception:  # the next flush retries; the loop must go on
            log.exception("cluster %s: flush failed", self.name)

    def flush(self) -> None:
        """Write the waiting inventory, then decide and publish the waiting digests."""
        with self._lock:
            replace = self._replace_pending and len(self._listed) == len(self._scopes)
            if replace:
                pods = list(self._pods.items())
                upserts: list[tuple[PodKey, _Pod]] = []
                forgets: dict[PodKey, datetime] = {}
                self._replace_pending = False
                self._upserts, self._forgets = {}, {}
            else:
                pods = []
                upserts = list(self._upserts.items())
                forgets = self._forgets
                self._upserts, self._forgets = {}, {}
            if time.monotonic() >= self._decide_after:
                checks, self._checks = self._checks, {}
            else:  # Redis or the broker failed lately: wait for the backoff to pass
                checks = {}
            oldest, self._oldest_pending = self._oldest_pending, None
            self._flushing = True
        try:
            self._flush(replace, pods, upserts, forgets, checks)
        finally:
            with self._lock:
                self._flushing = False
        if oldest is not None:
            metrics.WATCH_LAG.labels(self.name).set(time.monotonic() - oldest)

    def _flush(
        self,
        replace: bool,
        pods: list[tuple[PodKey, _Pod]],
        upserts: list[tuple[PodKey, _Pod]],
        forgets: Mapping[PodKey, datetime],
        checks: Mapping[str, discovery.ScanRequest],
    ) -> None:
        now = self._clock()
        # Postgres and Redis do not wait for each other: the inventory is written while
        # the digests are decided and published.
        inventory = self._writer.submit(self._write_inventory, replace, pods, upserts, forgets, now)
        try:
            if self._decide(checks, now):
                self._decide_backoff.reset()
            else:
                self._decide_failed("publishing stopped")
        except errors.ScanqueueError as e:
            with self._lock:
                for digest, request in checks.items():
                    self._checks.setdefault(digest, request)
            self._decide_failed(str(e))
        try:
            written = inventory.result()
        except errors.ScanqueueError as e:
            log.warning("cluster %s: inventory not written (%s); retrying", self.name, e)
            with self._lock:  # the next flush writes the whole picture again
                self._replace_pending = True
            written = False
        if replace and written:
            if not self.ready.is_set():
                log.info(
                    "cluster %s: inventory of %d containers in %d pods written",
                    self.name,
                    sum(len(entry.requests) for _, entry in pods),
                    len(pods),
                    extra=self._ctx(),
                )
            self.ready.set()

    def _decide_failed(self, why: str) -> None:
        delay = self._decide_backoff.next()
        self._decide_after = time.monotonic() + delay
        log.warning("cluster %s: scans not decided (%s); again in %.1fs", self.name, why, delay)

    def _write_inventory(
        self,
        replace: bool,
        pods: list[tuple[PodKey, _Pod]],
        upserts: list[tuple[PodKey, _Pod]],
        forgets: Mapping[PodKey, datetime],
        now: datetime,
    ) -> bool:
        if not replace and not upserts and not forgets:
            return False
        try:
            with self._pool.connection(timeout=POOL_WAIT_SECONDS) as conn:
                if replace:
                    # Everything in the picture runs now: seen at ``now``, which also keeps
                    # the store's "not in rows" check to the containers that are gone.
                    rows = self._rows(pods, seen_at=now)
                    store.replace_cluster_inventory(conn, cluster=self.name, rows=rows, at=now)
                else:
                    rows = self._rows(upserts)
                    if rows:
                        store.record_containers(conn, rows)
                    by_namespace: dict[tuple[str, datetime], list[str]] = {}
                    for (namespace, pod), at in forgets.items():
                        by_namespace.setdefault((namespace, at), []).append(pod)
                    for (namespace, at), names in by_namespace.items():
                        store.forget_pods(
                            conn, cluster=self.name, namespace=namespace, pods=names, at=at
                        )
        except errors.ScanqueueError:
            raise
        except Exception as e:  # psycopg errors stay inside store; the pool's are translated here
            raise errors.TemporaryError(f"Postgres: {type(e).__name__}: {e}") from e
        metrics.INVENTORY_ROWS.labels(self.name).inc(len(rows))
        return True

    def _rows(
        self, pods: Iterable[tuple[PodKey, _Pod]], *, seen_at: datetime | None = None
    ) -> list[store.ContainerRow]:
        return [
            store.ContainerRow(
                cluster=self.name,
                namespace=r.namespace,
                workload_kind=r.workload_kind,
                workload_name=r.workload_name,
                pod=r.pod,
                container=r.container,
                container_type=r.container_type,
                image=r.image,
                digest=r.digest,
                node=r.node,
                seen_at=seen_at or entry.seen_at,
            )
            for _, entry in pods
            for r in entry.requests
        ]

    def _decide(self, checks: Mapping[str, discovery.ScanRequest], now: datetime) -> bool:
        """Claim what needs a scan farm-wide and publish it; count the rest as dedupe hits.

        Returns False when publishing stopped part-way (those digests wait for the next try).
        """
        if not checks:
            return True
        digests = list(checks)
        interval = self._scan.rescan_interval_seconds
        with self._lock:
            changed, self._new_pullers = (
                self._new_pullers & set(digests),
                self._new_pullers - set(digests),
            )
        if changed:  # new pull secrets: a refused credential may work now
            dedupe.clear_failed_of_kind(
                self._redis, sorted(changed), cluster=self.name, kind="credential"
            )
        unknown = dedupe.unsettled(self._redis, cluster=self.name, digests=digests)
        fresh: set[str] = set()
        if unknown:  # Redis may have lost its keys (restart): Postgres remembers scans
            try:
                with self._pool.connection(timeout=POOL_WAIT_SECONDS) as conn:
                    fresh = store.fresh_digests(
                        conn, unknown, since=now - timedelta(seconds=interval)
                    )
            except errors.ScanqueueError:
                raise
            except Exception as e:
                raise errors.TemporaryError(f"Postgres: {type(e).__name__}: {e}") from e
            if fresh:
                dedupe.mark_many_fresh(
                    self._redis, fresh, ttl_seconds=min(interval, FRESH_HINT_SECONDS)
                )
        if fresh:
            metrics.DEDUPE_HITS.labels(self.name, "fresh").inc(len(fresh))
        decisions = dedupe.claim(
            self._redis,
            cluster=self.name,
            digests=[d for d in digests if d not in fresh],
            ttl_seconds=self._scan.inflight_ttl_seconds,
        )
        decided = set(fresh)
        failed: dict[str, discovery.ScanRequest] = {}
        claimed = []
        for decision in decisions:
            if decision.status == "claimed":
                claimed.append(decision)
            else:
                metrics.DEDUPE_HITS.labels(self.name, decision.status).inc()
                decided.add(decision.digest)
        try:
            if claimed:
                with self._publisher.batch() as producer:
                    for decision in claimed:
                        request = dataclasses.replace(
                            checks[decision.digest], scan_id=decision.scan_id
                        )
                        self._publisher.publish(request, producer=producer)
                        decided.add(decision.digest)
                        self._published.inc()
                        log.info(
                            "published scan of %s for %s/%s",
                            request.digest,
                            request.namespace,
                            request.pod,
                            extra=self._ctx(request),
                        )
        except errors.ScanqueueError as e:
            log.warning("cluster %s: publishing stopped: %s", self.name, e, extra=self._ctx())
            for decision in claimed:
                if decision.digest not in decided:  # hand the claim back; retried next flush
                    dedupe.release(self._redis, decision.digest, scan_id=decision.scan_id)
                    failed[decision.digest] = checks[decision.digest]
        with self._lock:
            self._decided |= decided
            for digest, request in failed.items():
                self._checks.setdefault(digest, request)
        return not failed

    def _ctx(self, request: discovery.ScanRequest | None = None) -> dict[str, Any]:
        if request is None:
            return {"cluster": self.name}
        return {
            "cluster": self.name,
            "scan_id": request.scan_id,
            "digest": request.digest,
            "namespace": request.namespace,
            "pod": request.pod,
            "container": request.container,
            "image": request.image,
            "queue": publish.queue_name(self.name),
        }

    # ------------------------------------------------------------------ inspection

    def idle(self) -> bool:
        """True when every scope was listed, the inventory written and nothing waits to be
        flushed (events still on the wire are not known here)."""
        with self._lock:
            return (
                self.ready.is_set()
                and not self._flushing
                and not self._replace_pending
                and not self._upserts
                and not self._forgets
                and not self._checks
            )

    def running(self) -> list[discovery.ScanRequest]:
        """What the watcher believes runs in the cluster now (for tests and ``explain``)."""
        with self._lock:
            return [r for entry in self._pods.values() for r in entry.requests]


def run(
    settings: config.Settings,
    *,
    clusters: Sequence[str] = (),
    stop: threading.Event,
    options: WatchOptions = WatchOptions(),
) -> None:
    """Watch ``clusters`` (default: all configured) until ``stop`` is set, one thread each.

    Opens the collaborators once per process (Redis client, Postgres pool,
    one broker client per cluster) and closes them after the last flush.
    Raises ``ConfigError`` for an unknown cluster or no cluster at all.
    """
    chosen = [settings.cluster(n) for n in clusters] if clusters else list(settings.clusters)
    if not chosen:
        raise errors.ConfigError(f"{settings.source}: no [[clusters]] configured; nothing to watch")
    redis_client = dedupe.client(
        settings.broker.url,
        password=config.broker_password(settings.broker),
        tls=config.redis_tls(settings.broker, settings.broker.url),
    )
    pool = store.pool(
        settings.database.url,
        min_size=settings.database.pool_min_size,
        max_size=settings.database.pool_max_size,
        password=config.database_password(settings.database),
    )
    publishers: list[publish.Publisher] = []
    threads: list[threading.Thread] = []
    try:
        for cluster in chosen:
            publisher = publish.Publisher(
                settings.broker.url,
                password=config.broker_password(settings.broker),
                tls=config.redis_tls(settings.broker, settings.broker.url),
            )
            publishers.append(publisher)
            watcher = ClusterWatcher(
                cluster=cluster,
                scan=settings.scan,
                api=kube.api_client(cluster),
                redis_client=redis_client,
                publisher=publisher,
                pool=pool,
                stop=stop,
                options=options,
            )
            threads.append(watcher.start())
            jobs = jobwatch.JobWatcher(
                cluster=cluster,
                api=kube.api_client(cluster),
                send=functools.partial(publisher.publish_collect, cluster.name),
                stop=stop,
            )
            threads.append(jobs.start())
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for publisher in publishers:
            publisher.close()
        pool.close()
        redis_client.close()
