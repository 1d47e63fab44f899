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
- ``worker_cancel_long_running_tasks_on_connection_loss``: after a broker
  connection loss the running late-ack tasks are cancelled; they are
  redelivered by the broker, not run twice at once.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Queue

from scanqueue import config

SCAN_TASK = "scanqueue.scan"
CONTROL_QUEUE = "scanqueue.control"


def queue_name(cluster: str) -> str:
    """The Celery queue of one cluster's scans: a slow cluster never blocks another."""
    return f"scan.{cluster}"


def make_app(settings: config.Settings) -> Celery:
    """Build the Celery app for ``settings``; does not connect to the broker."""
    app = Celery("scanqueue", broker=settings.broker.url, include=["workers.tasks"])
    scan = settings.scan
    queues = [Queue(queue_name(c.name)) for c in settings.clusters] + [Queue(CONTROL_QUEUE)]
    app.conf.update(
        broker_connection_retry_on_startup=True,
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
        },
        task_soft_time_limit=scan.soft_time_limit_seconds,
        task_time_limit=scan.hard_time_limit_seconds,
        task_queues=queues,
        task_default_queue=CONTROL_QUEUE,
        task_create_missing_queues=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
    )
    app.conf.scanqueue_settings = settings
    return app


app = make_app(config.load())


@app.task(name="scanqueue.ping", queue=CONTROL_QUEUE)
def ping() -> str:
    """Liveness probe for health checks: a worker consuming the control queue answers."""
    return "pong"


def settings_of(celery_app: Any) -> config.Settings:
    """The scanqueue settings the app was built with."""
    settings: config.Settings = celery_app.conf.scanqueue_settings
    return settings
