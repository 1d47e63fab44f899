"""One cluster's watcher: the picture of its pods, kept by stream threads, flushed in batches.

For each scope (all namespaces, or each included namespace) a stream thread
(``streams.follow``) lists pods, then watches them; events only update an in-memory
picture of the cluster (pod -> its containers' ScanRequests). A flusher thread turns that
picture into side effects in batches: the inventory (``inventory.write``: upserts and
forgotten pods every ``flush_interval`` or ``flush_rows``, and after a full (re)list the
whole cluster at once) and the scan tasks (``publishing.decide``). Every
``reevaluate_interval`` all digests the cluster runs are checked again, so rescans and
another cluster's failures are picked up.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from scanqueue import config, discovery, errors, kube, metrics, publish
from scanqueue.watcher import inventory, publishing, streams
from scanqueue.watcher.pacing import DEFAULT_OPTIONS, Backoff, WatchOptions
from scanqueue.watcher.picture import Pod, PodKey, Running, Scope

log = logging.getLogger(__name__)


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
        options: WatchOptions = DEFAULT_OPTIONS,
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
        self._pods: dict[PodKey, Pod] = {}
        self._listed: set[Scope] = set()
        # Work waiting for the flusher.
        self._replace_pending = False
        self._upserts: dict[PodKey, Pod] = {}
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

    # ------------------------------------------------------------------ running

    def start(self) -> threading.Thread:
        """Run the watcher in a background thread; returns it (join it after setting stop)."""
        thread = threading.Thread(target=self.run, name=f"watch-{self.name}", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        """Start a stream thread per scope and flush until ``stop`` is set; flush once more."""
        log.info(
            "watching cluster %s (%s)",
            self.name,
            self._describe_scopes(),
            extra=publishing.log_context(self.name),
        )
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
        log.info("stopped watching cluster %s", self.name, extra=publishing.log_context(self.name))

    def _describe_scopes(self) -> str:
        if self._scopes == (None,):
            return "all namespaces"
        return "namespaces " + ", ".join(s for s in self._scopes if s)

    # ----------------------------------------------------------------- streaming

    def _stream(self, scope: Scope) -> None:
        streams.follow(
            scope,
            cluster=self.name,
            api=self._api,
            options=self._options,
            stop=self._stop,
            relist=self._relist,
            apply=self._apply,
        )

    def _read_owner(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            return kube.read_owner(api=self._api, kind=kind, namespace=namespace, name=name)
        except kube.NotFound:
            return None
        except errors.PermanentError as e:
            log.warning("cluster %s: cannot read %s %s/%s: %s", self.name, kind, namespace, name, e)
            return None

    def _observe(self, pod: Mapping[str, Any]) -> tuple[PodKey, Pod | None, Running]:
        """What ``pod`` means now: its key, its inventory entry (None: nothing runs in it
        any more) and its containers that have a digest (a finished pod's too: they ran)."""
        metadata = pod.get("metadata") or {}
        key = (str(metadata.get("namespace", "")), str(metadata.get("name", "")))
        found = discovery.requests(pod, cluster=self.name, owners=self._owners)
        running = tuple(r for r in found if r.digest is not None)
        if not running or discovery.terminal(pod):
            return key, None, running
        return key, Pod(self._clock(), running), running

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
        fresh: dict[PodKey, Pod] = {}
        wanted: list[Running] = []
        listed = metrics.WATCH_EVENTS.labels(self.name, "LISTED")
        version = ""
        pages = kube.list_pod_pages(
            api=self._api, namespace=scope, label_selector=discovery.NOT_MANAGED_SELECTOR
        )
        for items, page_version in pages:
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
                upserts: list[tuple[PodKey, Pod]] = []
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
        pods: list[tuple[PodKey, Pod]],
        upserts: list[tuple[PodKey, Pod]],
        forgets: Mapping[PodKey, datetime],
        checks: Mapping[str, discovery.ScanRequest],
    ) -> None:
        now = self._clock()
        # Postgres and Redis do not wait for each other: the inventory is written while
        # the digests are decided and published.
        written_later = self._writer.submit(
            inventory.write,
            self._pool,
            cluster=self.name,
            replace=replace,
            pods=pods,
            upserts=upserts,
            forgets=forgets,
            now=now,
        )
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
            written = written_later.result()
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
                    extra=publishing.log_context(self.name),
                )
            self.ready.set()

    def _decide(self, checks: Mapping[str, discovery.ScanRequest], now: datetime) -> bool:
        """Claim and publish what ``checks`` needs (``publishing.decide``); fold the answer in.

        Returns False when publishing stopped part-way (those digests wait for the next try).
        """
        if not checks:
            return True
        with self._lock:
            changed, self._new_pullers = (
                self._new_pullers & set(checks),
                self._new_pullers - set(checks),
            )
        decided = publishing.decide(
            checks,
            now,
            cluster=self.name,
            scan=self._scan,
            redis_client=self._redis,
            pool=self._pool,
            publisher=self._publisher,
            new_pullers=changed,
        )
        with self._lock:
            self._decided |= decided.settled
            for digest, request in decided.failed.items():
                self._checks.setdefault(digest, request)
        return not decided.failed

    def _decide_failed(self, why: str) -> None:
        delay = self._decide_backoff.next()
        self._decide_after = time.monotonic() + delay
        log.warning("cluster %s: scans not decided (%s); again in %.1fs", self.name, why, delay)

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
