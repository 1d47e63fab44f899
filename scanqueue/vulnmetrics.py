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
DELIVERY_STATES = ("pending", "sent", "dead")

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
    "scanqueue_alert_deliveries": (
        "gauge",
        "Alert notifications by state: pending (retrying), sent (kept alerts.keep_sent_days), "
        "dead (dead letters, in the alert_dead_letters view)",
        ("state",),
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
            # the label prefix once per workload: 20,000 series render in tens of ms
            prefix = (
                f'scanqueue_workload_vulnerabilities{{cluster="{_escape(cluster)}",'
                f'namespace="{_escape(namespace)}",workload_kind="{_escape(kind)}",'
                f'workload="{_escape(workload)}",severity="'
            )
            for severity in SEVERITIES:
                lines.append(f'{prefix}{severity}",fixable="true"}} {by.get((severity, True), 0)}')
                lines.append(
                    f'{prefix}{severity}",fixable="false"}} {by.get((severity, False), 0)}'
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
        lines += _header("scanqueue_alert_deliveries")
        deliveries = dict(snapshot.alert_deliveries)
        for state in DELIVERY_STATES:
            lines.append(
                _sample("scanqueue_alert_deliveries", {"state": state}, deliveries.get(state, 0))
            )
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
    """Runs ``fetch`` at most once per ``ttl_seconds``, in the background; scrapes read text.

    A scrape never runs the queries (except the first of the process): an
    expired cache starts one background refresh and serves the current text
    meanwhile. A failed refresh keeps serving the previous numbers, with
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
        self._refreshing = False
        self._closed = False
        self._refresh_lock = threading.Lock()  # one refresh at a time
        self.refreshes = 0  # how many times fetch ran (for tests and the benchmark)

    def text(self) -> str:
        """The exposition text; never waits for the queries once there is a first result.

        When the text is older than the ttl, one background refresh starts and
        this scrape gets the current text (at most one ttl old); only the very
        first scrape of a process waits for the queries.
        """
        with self._lock:
            if not self._text:
                self._refresh()
            current = self._text
            if self._clock() >= self._expires and not self._refreshing and not self._closed:
                self._refreshing = True
                threading.Thread(target=self._background, name="vulnmetrics", daemon=True).start()
            return current

    def close(self) -> None:
        """Start no more refreshes and wait for a running one (before closing its database)."""
        with self._lock:
            self._closed = True
        with self._refresh_lock:
            pass

    def _background(self) -> None:
        try:
            self._refresh()
        finally:
            with self._lock:
                self._refreshing = False

    def _refresh(self) -> None:
        with self._refresh_lock:
            started = time.perf_counter()
            snapshot, health = self._snapshot, self._health
            try:
                snapshot = self._fetch()
            except (errors.ScanqueueError, OSError) as e:
                log.warning("vulnerability metrics not refreshed: %s", type(e).__name__)
                health = dataclasses.replace(health, up=False, errors=health.errors + 1)
            else:
                health = dataclasses.replace(
                    health,
                    up=True,
                    refresh_seconds=time.perf_counter() - started,
                    refreshed_at=self._wall().timestamp(),
                )
            text = render(snapshot, now=self._wall(), health=health)
            self._snapshot, self._health, self._text = snapshot, health, text
            self._expires = self._clock() + self._ttl
            self.refreshes += 1


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
