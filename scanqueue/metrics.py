"""Prometheus metrics of the farm: one registry, the metrics defined once.

Every process (watcher, worker) exposes ``REGISTRY``; each metric is labelled
by cluster. Defining a metric connects nowhere; ``serve`` starts the HTTP
endpoint when a command asks for it. Label values are names (clusters, event
types, reasons), never an image reference with credentials or a secret.
Workers add their metrics here too.
"""

from __future__ import annotations

from typing import Any

import prometheus_client
from prometheus_client import Counter, Gauge

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
