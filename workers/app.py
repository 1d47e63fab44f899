"""The Celery app: queues, reliability settings, beat schedule.

Run with ``celery -A workers.app worker -Q scan.<cluster>`` (beat and flower
likewise). Settings come from scanqueue's config (``SCANQUEUE_CONFIG`` and
``SCANQUEUE_*``), read once when this module is imported; creating the app
connects nowhere.

Reliability, in one place:
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a task whose worker dies
  is redelivered, and every task is idempotent (names derive from cluster and
  digest), so the redelivery finds its own Job instead of making another.
- ``worker_prefetch_multiplier = 1``: a worker holds one task it is not running
  at most, so a slow cluster does not hoard work.
- Time limits are ordered: scan Job deadline < soft limit < hard limit <
  broker visibility timeout (checked by ``config``), so Redis never redelivers
  a task that is still running.
- ``unacked_restore_interval``: a dead worker's tasks come back within a tenth
  of the visibility timeout after it passed (kombu's default waits ~100 s more).
- ``worker_cancel_long_running_tasks_on_connection_loss``: after a broker
  connection loss the running late-ack tasks are cancelled; they are
  redelivered by the broker, not run twice at once.

Operations, also here: every log line of a worker (main and pool processes,
embedded beat) goes through ``scanqueue.logs`` (one JSON object per line,
redacted), via Celery's ``setup_logging`` signal; ``celery -A workers.app
worker --metrics-port PORT`` serves Prometheus metrics from the worker's main
process, adding up every pool process's samples (prometheus-client
multiprocess mode: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import click
from celery import Celery, bootsteps, signals
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.entity import Queue

from scanqueue import config, logs, publish

SCAN_TASK = "scanqueue.scan"
CONTROL_QUEUE = "scanqueue.control"
RESCAN_QUEUE = "scanqueue.rescan"  # scanqueue.scans.rescan.QUEUE


def queue_name(cluster: str) -> str:
    """The Celery queue of one cluster's scans: a slow cluster never blocks another."""
    return f"scan.{cluster}"


def restore_interval(broker: config.BrokerSettings) -> int:
    """Seconds between sweeps for the unacked messages of dead workers: 1..10."""
    return max(1, min(10, broker.visibility_timeout_seconds // 10))


def make_app(settings: config.Settings) -> Celery:
    """Build the Celery app for ``settings``; does not connect to the broker."""
    # workers.heartbeat: the stamps docker/healthcheck.py --max-age reads
    tasks = ["workers.tasks", "workers.heartbeat", "workers.alerts", "workers.rescans"]
    publish.use_shared_clients()  # one Redis client per pool in kombu, not one per command
    app = Celery("scanqueue", broker=settings.broker.url, include=tasks)
    scan = settings.scan
    queues = [Queue(queue_name(c.name)) for c in settings.clusters] + [Queue(CONTROL_QUEUE)]
    if settings.rescan.enabled:  # rescans from stored SBOMs: no cluster owns this queue
        queues.append(Queue(RESCAN_QUEUE))
    app.conf.update(
        broker_connection_retry_on_startup=True,
        # from broker.password_file, apart from the URL; Celery hands it to kombu (broker)
        # and to the Redis result backend
        broker_password=config.broker_password(settings.broker),
        redis_password=config.broker_password(settings.broker),
        result_backend=settings.broker.result_backend or None,
        task_ignore_result=not settings.broker.result_backend,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options={
            "visibility_timeout": settings.broker.visibility_timeout_seconds,
            # kombu looks for unacked messages of dead workers only every interval x
            # throttle seconds (10 x 10 by default): a task could wait 100 s past its
            # visibility timeout. Look every tenth of the timeout (1..10 s) instead.
            "unacked_restore_interval": restore_interval(settings.broker),
            "unacked_restore_throttle": 1,
            # A sweep holds a Redis mutex (SET NX EX) while it restores at most 10 messages,
            # a few ms; kombu lets it expire after 300 s. A worker killed while holding it
            # (SIGKILL, OOM) stopped every other worker's sweeps for five minutes, its own
            # unacked tasks with them (a test caught it once).
            "unacked_mutex_expire": 3 * restore_interval(settings.broker),
        },
        task_soft_time_limit=scan.soft_time_limit_seconds,
        task_time_limit=scan.hard_time_limit_seconds,
        task_queues=queues,
        task_default_queue=CONTROL_QUEUE,
        task_create_missing_queues=False,
        worker_send_task_events=True,
        worker_consumer="workers.app:Consumer",  # task events sent in batches (below)
        # No task-sent events: the watcher's publisher sends none, so Flower could never
        # count on them, and a worker sends a scan task whenever a collect frees a slot
        # for a waiting scan: an event PUBLISH each (a fifth of a collect's delete step
        # under py-spy, bench/README). Flower shows a task from its task-received event.
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
    )
    broker_tls = config.redis_tls(settings.broker, settings.broker.url)
    if broker_tls:  # rediss://: verify the server's certificate (broker.ca_file or system CAs)
        app.conf.broker_use_ssl = broker_tls
    backend_tls = config.redis_tls(settings.broker, settings.broker.result_backend)
    if backend_tls:
        app.conf.redis_backend_use_ssl = backend_tls
    app.conf.scanqueue_settings = settings
    return app


app = make_app(config.load())


@app.task(name="scanqueue.ping", queue=CONTROL_QUEUE)
def ping() -> str:
    """Liveness probe for health checks: a worker consuming the control queue answers."""
    return "pong"


EVENT_FLUSH_SECONDS = 0.1  # task events wait at most this long for others to share a message


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, sending the task events Flower shows (received, started,
    succeeded...) in batches: one ``task.multi`` message per ``EVENT_FLUSH_SECONDS`` (or per
    24 events, Celery's buffer limit) instead of one per event at the next loop turn.

    Three events a task, each its own Redis PUBLISH with a new client, were half of a worker
    main process's CPU in a burst (bench/README, "pipeline"). Flower reads ``task.multi``
    messages as it reads single events (Celery's event receiver takes a list); they reach
    it at most a tenth of a second later. A warm shutdown sends what is buffered, and the
    events of tasks the pool finishes while it stops at once (a test lost some under load
    without this: tests/integration/test_task_events.py). Events are fire and forget as
    before: a worker killed loses what it had not sent, at most a tenth of a second's worth."""

    _flush_due_at = 0.0  # monotonic time of the scheduled flush; 0: none scheduled

    def on_send_event_buffered(self) -> None:
        if not self.hub:
            return
        if self.blueprint.state != bootsteps.RUN:
            # stopping: the loop may not turn again, and the tasks the pool finishes
            # meanwhile still send their events
            self._flush_events_now()
            return
        now = time.monotonic()
        # one flush scheduled at a time; one overdue by a second was lost with its timer
        # entry (a reconnect), and the next event schedules another
        if not self._flush_due_at or now > self._flush_due_at + 1.0:
            self._flush_due_at = now + EVENT_FLUSH_SECONDS
            self.hub.call_later(EVENT_FLUSH_SECONDS, self._flush_buffered_events)

    def _flush_buffered_events(self) -> None:
        self._flush_due_at = 0.0
        self._flush_events()

    def _flush_events_now(self) -> None:
        try:
            self._flush_events()
        except Exception as e:  # the broker may be gone: stopping matters more
            logging.getLogger(__name__).warning("task events not sent: %s", e)

    def stop(self) -> None:
        """A warm shutdown: what waits for the next flush is sent first."""
        self._flush_events_now()
        super().stop()


def settings_of(celery_app: Any) -> config.Settings:
    """The scanqueue settings the app was built with."""
    settings: config.Settings = celery_app.conf.scanqueue_settings
    return settings


# --- logs: scanqueue.logs instead of Celery's own formatting -------------------------------

LOG_FORMAT_VARIABLE = "SQ_LOG_FORMAT"  # json (default) or kv; not SCANQUEUE_*: not a setting


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Celery calls this instead of configuring logging (main process and every pool process)."""
    fmt = os.environ.get(LOG_FORMAT_VARIABLE, "json")
    logs.setup(loglevel or "INFO", "kv" if fmt == "kv" else "json")
    logging.captureWarnings(True)  # Celery's warnings (running as root...) become log lines too
    # Celery's own INFO lines for every task (received; succeeded, with its return value;
    # retry) say again what our tasks log with the scan's fields (submitted, stored, why a
    # retry): two more lines per task, a tenth of a worker's main process CPU under a burst
    # (py-spy). At -l DEBUG they come back; a task's failure is still logged (ERROR).
    quiet = logging.WARNING if logging.getLogger().getEffectiveLevel() > logging.DEBUG else 0
    for name in CELERY_TASK_LOGGERS:
        logging.getLogger(name).setLevel(quiet)


CELERY_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


# --- metrics: --metrics-port on `celery worker` ---------------------------------------------

app.user_options["worker"].add(
    click.Option(
        ["--metrics-port"],
        type=int,
        default=None,
        help="Serve Prometheus metrics on this port (set PROMETHEUS_MULTIPROC_DIR for prefork).",
    )
)
app.user_options["worker"].add(
    click.Option(["--metrics-address"], default="127.0.0.1", help="Address for --metrics-port.")
)


class MetricsServer(bootsteps.StartStopStep):  # type: ignore[misc]
    """Serves the worker's metrics from its main process when ``--metrics-port`` is given."""

    def __init__(
        self,
        parent: Any,
        metrics_port: int | None = None,
        metrics_address: str = "127.0.0.1",
        **options: Any,
    ) -> None:
        super().__init__(parent, **options)
        self.port = metrics_port
        self.address = metrics_address

    def start(self, parent: Any) -> None:
        if self.port is None:
            return
        from scanqueue import dedupe, metrics

        settings = settings_of(app)
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            logging.getLogger(__name__).warning(
                "PROMETHEUS_MULTIPROC_DIR is not set: metrics recorded in pool processes "
                "are not served; set it to an empty directory before starting the worker"
            )
        metrics.serve_worker(
            self.port,
            address=self.address,
            client=dedupe.client(
                settings.broker.url,
                password=config.broker_password(settings.broker),
                tls=config.redis_tls(settings.broker, settings.broker.url),
            ),
            queues={c.name: queue_name(c.name) for c in settings.clusters},
        )
        logging.getLogger(__name__).info(
            "metrics served on http://%s:%d/metrics", self.address, self.port
        )


app.steps["worker"].add(MetricsServer)


@signals.worker_init.connect
def _fresh_metrics_directory(**_: Any) -> None:
    """Before the pool starts: drop samples a previous run of this worker left behind."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))


@signals.worker_process_shutdown.connect
def _pool_process_gone(pid: int | None = None, **_: Any) -> None:
    from scanqueue import metrics

    metrics.process_exited(pid or os.getpid())
