"""Prometheus metrics of the farm: one registry, the metrics defined once.

Every process (watcher, worker) exposes ``REGISTRY``; each metric is labelled
by cluster. Defining a metric connects nowhere; ``serve`` starts the HTTP
endpoint when a command asks for it. Label values are names (clusters, event
types, reasons, registry hosts), never an image reference with credentials or
a secret.

Workers run tasks in prefork pool processes, so their metrics use
prometheus-client's multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set
(to an empty directory, before the worker starts) every pool process writes
its samples there and ``serve_worker`` (in the worker's main process) adds
them up at scrape time. Queue depth is read from Redis at scrape time too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import prometheus_client
import redis
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

REGISTRY = prometheus_client.CollectorRegistry(auto_describe=True)

# --- the watcher --------------------------------------------------------------------------

WATCH_EVENTS = Counter(
    "scanqueue_watch_events",
    "Pod events the watcher handled (listed pods count as ADDED)",
    ["cluster", "type"],
    registry=REGISTRY,
)
TASKS_PUBLISHED = Counter(
    "scanqueue_tasks_published",
    "Scan tasks published (one per digest that needed a scan)",
    ["cluster"],
    registry=REGISTRY,
)
DEDUPE_HITS = Counter(
    "scanqueue_dedupe_hits",
    "Digests seen that needed no new task, by why: fresh, inflight, failed-here",
    ["cluster", "reason"],
    registry=REGISTRY,
)
WATCH_RESTARTS = Counter(
    "scanqueue_watch_restarts",
    "Watch streams started again, by why: timeout, error, gone",
    ["cluster", "reason"],
    registry=REGISTRY,
)
WATCH_GONE = Counter(
    "scanqueue_watch_gone",
    "410 Gone answers to a watch (the watcher re-lists)",
    ["cluster"],
    registry=REGISTRY,
)
WATCH_LAG = Gauge(
    "scanqueue_watch_lag_seconds",
    "How long the oldest event of the last flush waited before inventory and tasks were written",
    ["cluster"],
    registry=REGISTRY,
)
INVENTORY_ROWS = Counter(
    "scanqueue_inventory_rows_written",
    "Container rows written to the inventory",
    ["cluster"],
    registry=REGISTRY,
)

# --- the workers ----------------------------------------------------------------------------

SCANS = Counter(
    "scanqueue_scans",
    "Scan task results by outcome: submitted, adopted, busy (cap reached), succeeded, "
    "failed, timeout, refused",
    ["cluster", "outcome"],
    registry=REGISTRY,
)
SCAN_DURATION = Histogram(
    "scanqueue_scan_duration_seconds",
    "From a scan's start (Job submitted) to its stored result, successful or not",
    ["cluster"],
    buckets=(5, 10, 20, 30, 60, 120, 300, 600, 1200, float("inf")),
    registry=REGISTRY,
)
JOBS_IN_FLIGHT = Gauge(
    "scanqueue_jobs_in_flight",
    "Scan Jobs holding one of the cluster's max_inflight slots (created, not yet collected, "
    "failed or swept), at the last collect pass",
    ["cluster"],
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
REGISTRY_REFUSALS = Counter(
    "scanqueue_registry_refusals",
    "Candidate credentials (or anonymous pulls) a registry refused while checking them",
    ["cluster", "registry"],
    registry=REGISTRY,
)
QUEUE_DEPTH = "scanqueue_queue_depth"  # read from Redis at scrape time, see QueueDepth

# kombu's Redis transport keeps priorities 3, 6 and 9 of queue Q in lists "Q\x06\x16<n>"
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


class QueueDepth(Collector):
    """``scanqueue_queue_depth{cluster, queue}``: tasks waiting in each cluster's queue (LLEN).

    Read at scrape time; a Redis that does not answer gives no sample (and a
    debug line), not a failed scrape.
    """

    def __init__(self, client: redis.Redis, queues: Mapping[str, str]) -> None:
        self._client = client
        self._queues = dict(queues)  # cluster -> queue name

    def describe(self) -> list[Any]:
        return []  # registering must not read Redis

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            QUEUE_DEPTH, "Scan tasks waiting in the cluster's queue", labels=["cluster", "queue"]
        )
        for cluster, queue in sorted(self._queues.items()):
            try:
                pipe = self._client.pipeline(transaction=False)
                for suffix in _PRIORITY_SUFFIXES:
                    pipe.llen(queue + suffix)
                depth = sum(int(n) for n in pipe.execute())
            except redis.RedisError as e:
                log.debug("queue depth of %s not read: %s", queue, type(e).__name__)
                continue
            family.add_metric([cluster, queue], depth)
        yield family


OLDEST_IN_FLIGHT = "scanqueue_oldest_in_flight_seconds"  # read from Redis at scrape time
LAST_COLLECT = "scanqueue_last_collect_timestamp_seconds"
LAST_SWEEP = "scanqueue_last_sweep_timestamp_seconds"
SCANS_WAITING = "scanqueue_scans_waiting"


class FarmStatus(Collector):
    """What makes a stall visible, per cluster, read from Redis at scrape time (``status``):

    ``scanqueue_oldest_in_flight_seconds`` (age of the oldest in-flight slot),
    ``scanqueue_last_collect_timestamp_seconds`` / ``..._last_sweep_...`` (when a
    pass last completed) and ``scanqueue_scans_waiting`` (for an in-flight slot).
    Alert on ``time() - last_collect > 5 * interval and jobs in flight``.
    """

    def __init__(self, client: redis.Redis, queues: Mapping[str, str]) -> None:
        self._client = client
        self._queues = dict(queues)  # cluster -> queue name

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        import time

        from scanqueue import status

        clusters = sorted(self._queues)
        queues = [self._queues[c] for c in clusters]
        try:
            found = status.read(self._client, clusters=clusters, queues=queues, now=time.time())
        except Exception as e:  # a scrape must not fail because Redis is away
            log.debug("farm status not read: %s", type(e).__name__)
            return
        oldest = GaugeMetricFamily(OLDEST_IN_FLIGHT, "Age of the oldest scan Job slot in flight "
                                   "(0: none in flight)", labels=["cluster"])  # fmt: skip
        collect = GaugeMetricFamily(LAST_COLLECT, "When the last collect pass completed "
                                    "(Unix time)", labels=["cluster"])  # fmt: skip
        sweep = GaugeMetricFamily(LAST_SWEEP, "When the last sweep completed (Unix time)",
                                  labels=["cluster"])  # fmt: skip
        waiting = GaugeMetricFamily(SCANS_WAITING, "Scans waiting for an in-flight slot",
                                    labels=["cluster"])  # fmt: skip
        for s in found:
            oldest.add_metric([s.cluster], s.oldest_in_flight_seconds or 0.0)
            if s.last_collect is not None:
                collect.add_metric([s.cluster], s.last_collect)
            if s.last_sweep is not None:
                sweep.add_metric([s.cluster], s.last_sweep)
            waiting.add_metric([s.cluster], s.waiting)
        yield from (oldest, collect, sweep, waiting)


def worker_registry(client: redis.Redis, queues: Mapping[str, str]) -> Any:
    """The registry a worker serves: every pool process's samples plus queue depth.

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) the samples are
    read from that directory; otherwise this process's ``REGISTRY`` is served
    (right for the solo and threads pools only).
    """
    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        served = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(served)  # type: ignore[no-untyped-call]
    else:
        served = prometheus_client.CollectorRegistry()
        served.register(_Forward(REGISTRY))
    served.register(QueueDepth(client, queues))
    served.register(FarmStatus(client, queues))
    return served


class _Forward(Collector):
    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self._registry = registry

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        yield from self._registry.collect()


def serve_worker(
    port: int, *, address: str = "127.0.0.1", client: redis.Redis, queues: Mapping[str, str]
) -> None:
    """Expose ``worker_registry(...)`` on ``http://address:port/metrics`` from a daemon thread."""
    prometheus_client.start_http_server(
        port, addr=address, registry=worker_registry(client, queues)
    )


def process_exited(pid: int) -> None:
    """Tell multiprocess mode that pool process ``pid`` is gone (its live gauges go with it)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serve(port: int, *, address: str = "127.0.0.1") -> Any:
    """Expose ``REGISTRY`` on ``http://address:port/metrics`` from a daemon thread.

    Returns the HTTP server (``shutdown()`` and ``server_close()`` stop it);
    port 0 picks a free port (``server_address[1]``).
    """
    server, _thread = prometheus_client.start_http_server(port, addr=address, registry=REGISTRY)
    return server


def value(name: str, **labels: str) -> float:
    """The current value of a sample (0 when never set), e.g. for tests and ``explain``."""
    found = REGISTRY.get_sample_value(name, labels)
    return 0.0 if found is None else float(found)


# --- rescans from stored SBOMs (scanqueue.scans.rescan) -------------------------------------

RESCANS = Counter(
    "scanqueue_rescans",
    "Rescans from stored SBOMs by outcome: planned, succeeded, failed, no_sbom, "
    "unreadable_sbom (both end in a full scan), full_scan_asked (by the planner), "
    "already_ended (a late delivery of an ended rescan: nothing run)",
    ["outcome"],
    registry=REGISTRY,
)
RESCAN_OLDEST_DUE = Gauge(
    "scanqueue_rescan_oldest_due_seconds",
    "Age of the last evaluation of the oldest running digest due for one, at the last plan "
    "pass (0: none due)",
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
RESCAN_DB_UPDATED = Gauge(
    "scanqueue_vulnerability_db_updated_timestamp_seconds",
    "UpdatedAt of the vulnerability DB rescans evaluate against, at the last plan pass",
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
