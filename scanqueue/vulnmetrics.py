"""Vulnerability metrics for Prometheus, computed from Postgres and cached between scrapes.

Why it exists: people watch a farm's results on dashboards (trivy-operator's
``trivy_image_vulnerabilities`` is what they know). These metrics say what is
vulnerable where, from the views of the database, never from a worker's
memory, so every replica and restart of the exporter tells the same story.

Who serves it: one process of the farm, ``scanqueue exporter``, not every
worker: the numbers come from one set of queries over the whole database, so
N workers serving them would run N query sets per scrape and Prometheus would
store N copies of the same series. The workers keep serving their operational
metrics (``scanqueue.metrics``).

Cardinality is bounded by the inventory, never by advisories: one series per
(cluster, namespace, workload kind, workload, severity, fixable), per
(cluster, image state) and per cluster. Never a CVE, package, image digest or
anything a credential could hide in becomes a label.

``render`` is pure (snapshot and time in, exposition text out); ``Cache``
runs the queries at most once per ``ttl_seconds`` however many scrapes come;
``serve`` is the HTTP endpoint.
"""

from __future__ import annotations

import dataclasses
import http.server
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from scanqueue import errors
from scanqueue.store import overview

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")
IMAGE_STATES = ("scanned", "unscanned", "failing")

# name -> (type, help, labels): what this module exports; the Grafana test reads it.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "scanqueue_workload_vulnerabilities": (
        "gauge",
        "Current findings of the images a workload runs (each distinct finding once)",
        ("cluster", "namespace", "workload_kind", "workload", "severity", "fixable"),
    ),
    "scanqueue_images": (
        "gauge",
        "Running images (by digest) by state: scanned, unscanned, failing (last scan failed)",
        ("cluster", "state"),
    ),
    "scanqueue_oldest_scan_age_seconds": (
        "gauge",
        "Age of the oldest latest-successful scan among the digests running in the cluster",
        ("cluster",),
    ),
    "scanqueue_vulnmetrics_up": (
        "gauge",
        "1 when the last refresh from Postgres succeeded, 0 when these numbers are stale",
        (),
    ),
    "scanqueue_vulnmetrics_refresh_seconds": (
        "gauge",
        "How long the last refresh's queries took",
        (),
    ),
    "scanqueue_vulnmetrics_refreshed_timestamp_seconds": (
        "gauge",
        "Unix time of the last successful refresh",
        (),
    ),
    "scanqueue_vulnmetrics_refresh_errors_total": (
        "counter",
        "Refreshes that failed (Postgres unreachable...); the previous numbers were served",
        (),
    ),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    if labels:
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        return f"{name}{{{inner}}} {value:g}"
    return f"{name} {value:g}"


def _header(name: str) -> Iterable[str]:
    kind, help_text, _labels = METRICS[name]
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} {kind}"


@dataclasses.dataclass(frozen=True)
class Health:
    """The exporter's own state, rendered with the numbers."""

    up: bool
    refresh_seconds: float
    refreshed_at: float  # unix time of the last successful refresh; 0 = never
    errors: int


def render(snapshot: overview.Snapshot | None, *, now: datetime, health: Health) -> str:
    """The exposition text (Prometheus text format 0.0.4) of ``snapshot`` at ``now``.

    Every severity of a workload that has findings is present, zeros included,
    so a series does not vanish when its count drops to 0 while the workload runs.
    """
    lines: list[str] = []
    if snapshot is not None:
        lines += _header("scanqueue_workload_vulnerabilities")
        counts: dict[tuple[str, str, str, str], dict[tuple[str, bool], int]] = {}
        for v in snapshot.vulnerabilities:
            key = (v.cluster, v.namespace, v.workload_kind, v.workload)
            counts.setdefault(key, {})[(v.severity, v.fixable)] = v.count
        for (cluster, namespace, kind, workload), by in counts.items():
            for severity in SEVERITIES:
                for fixable in (True, False):
                    labels = {
                        "cluster": cluster,
                        "namespace": namespace,
                        "workload_kind": kind,
                        "workload": workload,
                        "severity": severity,
                        "fixable": "true" if fixable else "false",
                    }
                    lines.append(
                        _sample(
                            "scanqueue_workload_vulnerabilities",
                            labels,
                            by.get((severity, fixable), 0),
                        )
                    )
        lines += _header("scanqueue_images")
        states: dict[str, dict[str, int]] = {}
        for cluster, state, n in snapshot.image_states:
            states.setdefault(cluster, {})[state] = n
        for cluster, by_state in states.items():
            for state in IMAGE_STATES:
                labels = {"cluster": cluster, "state": state}
                lines.append(_sample("scanqueue_images", labels, by_state.get(state, 0)))
        lines += _header("scanqueue_oldest_scan_age_seconds")
        for cluster, scanned_at in snapshot.oldest_scans:
            age = max(0.0, (now - scanned_at).total_seconds())
            lines.append(_sample("scanqueue_oldest_scan_age_seconds", {"cluster": cluster}, age))
    for name, value in (
        ("scanqueue_vulnmetrics_up", 1.0 if health.up else 0.0),
        ("scanqueue_vulnmetrics_refresh_seconds", round(health.refresh_seconds, 6)),
        ("scanqueue_vulnmetrics_refreshed_timestamp_seconds", health.refreshed_at),
        ("scanqueue_vulnmetrics_refresh_errors_total", float(health.errors)),
    ):
        lines += _header(name)
        lines.append(_sample(name, {}, value))
    return "\n".join(lines) + "\n"


class Cache:
    """Runs ``fetch`` at most once per ``ttl_seconds``; scrapes in between get the same text.

    Concurrent scrapes of an expired cache wait for one refresh instead of each
    querying. A failed refresh keeps serving the previous numbers, with
    ``scanqueue_vulnmetrics_up 0`` and the error counted (and logged, by type).
    """

    def __init__(
        self,
        fetch: Callable[[], overview.Snapshot],
        *,
        ttl_seconds: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] | None = None,
    ) -> None:
        from datetime import UTC

        self._fetch = fetch
        self._ttl = ttl_seconds
        self._clock = clock
        self._wall = wall or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._text = ""
        self._expires = float("-inf")
        self._snapshot: overview.Snapshot | None = None
        self._health = Health(up=False, refresh_seconds=0.0, refreshed_at=0.0, errors=0)
        self.refreshes = 0  # how many times fetch ran (for tests and the benchmark)

    def text(self) -> str:
        """The exposition text, refreshed first when older than the ttl."""
        with self._lock:
            if self._clock() >= self._expires:
                self._refresh()
            return self._text

    def _refresh(self) -> None:
        started = time.perf_counter()
        health = self._health
        try:
            self._snapshot = self._fetch()
        except (errors.ScanqueueError, OSError) as e:
            log.warning("vulnerability metrics not refreshed: %s", type(e).__name__)
            health = dataclasses.replace(health, up=False, errors=health.errors + 1)
        else:
            now = self._wall()
            health = dataclasses.replace(
                health,
                up=True,
                refresh_seconds=time.perf_counter() - started,
                refreshed_at=now.timestamp(),
            )
        self.refreshes += 1
        self._health = health
        self._text = render(self._snapshot, now=self._wall(), health=health)
        self._expires = self._clock() + self._ttl


def serve(cache: Cache, *, address: str = "127.0.0.1", port: int = 0) -> http.server.HTTPServer:
    """An HTTP server answering ``GET /metrics`` from ``cache`` (and ``/healthz``); not started.

    Call ``serve_forever()`` (or run it in a thread) and ``shutdown()``;
    port 0 picks a free port (``server_address[1]``).
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                body, status = cache.text().encode(), 200
            elif self.path == "/healthz":
                body, status = b"ok\n", 200
            else:
                body, status = b"not found; try /metrics\n", 404
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("exporter: " + format, *args)

    server = http.server.ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    return server
