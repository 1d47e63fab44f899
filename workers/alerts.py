"""The alert tasks: plan notifications from the outbox, POST them, retry, dead-letter.

- ``scanqueue.alerts.dispatch`` (beat, every ``alerts.interval_seconds``, on the
  control queue): plan the outbox rows that succeeded scans left (one
  delivery per workload with new qualifying findings and per webhook), then
  send ``deliver`` for each delivery that is due: new ones, and retries whose
  task was lost with a dead worker.
- ``scanqueue.alerts.deliver``: one POST of one delivery. A temporary failure
  (timeout, refused connection, 5xx, 429) is retried by Celery with a
  doubling countdown; after ``alerts.max_attempts`` attempts, or at once for
  a permanent refusal (4xx, redirect), the delivery becomes a dead letter in
  Postgres with its last error.

None of this runs inside a scan: a scan only writes its outbox row. Nothing
here logs a webhook URL or a notification body; a webhook is ``kind#index (host)``.
Delivery is at least once: a worker killed between the POST and recording it
sends that one notification again.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task

import workers.tasks  # noqa: F401  (its beat schedule is set first; ours is added to it)
from scanqueue import alerts, config, errors, store, webhooks
from scanqueue.store import alerts as alert_store
from workers.app import CONTROL_QUEUE, app, settings_of

log = logging.getLogger(__name__)

DISPATCH_TASK = "scanqueue.alerts.dispatch"
DELIVER_TASK = "scanqueue.alerts.deliver"
_pool: list[Any] = []
_pool_lock = threading.Lock()
_PRUNE_EVERY = timedelta(hours=1)
_pruned_at: list[datetime] = []  # when this process last pruned sent deliveries


def _db() -> Any:
    """This process's Postgres pool for alerting (made on first use, after the fork)."""
    with _pool_lock:
        if not _pool:
            database = settings_of(app).database
            password = config.database_password(database)
            _pool.append(store.pool(database.url, min_size=1, max_size=2, password=password))
        return _pool[0]


def configured(settings: config.AlertSettings) -> dict[str, alerts.Webhook]:
    """The configured webhooks by name (``generic#0``...), parsed by the one URL parser."""
    found: dict[str, alerts.Webhook] = {}
    for kind in alerts.KINDS:
        for i, url in enumerate(getattr(settings, f"{kind}_urls")):
            hook = alerts.parse_webhook(kind, i, url)
            found[hook.name] = hook
    return found


def _lease(settings: config.AlertSettings) -> float:
    """How long a handed-out delivery is left alone: longer than one POST can take."""
    return 2 * settings.timeout_seconds + 30


@app.task(name=DISPATCH_TASK, queue=CONTROL_QUEUE, acks_late=True, ignore_result=True)
def dispatch() -> dict[str, int]:
    """Plan the outbox and hand out the deliveries that are due; returns the counts."""
    settings = settings_of(app).alerts
    hooks = configured(settings)
    now = datetime.now(UTC)
    try:
        with _db().connection() as conn:
            planned = alert_store.plan(
                conn,
                rule=alerts.Rule(settings.min_severity, settings.fixable_only),
                webhooks=sorted(hooks),
                now=now,
                max_age_seconds=settings.max_age_seconds,
            )
            due = alert_store.due(conn, now=now, lease_seconds=_lease(settings))
            if not _pruned_at or now - _pruned_at[0] > _PRUNE_EVERY:
                keep = timedelta(days=settings.keep_sent_days)
                alert_store.prune(conn, sent_before=now - keep)
                _pruned_at[:] = [now]
    except errors.TemporaryError as e:
        log.warning("alert dispatch postponed to the next pass: %s", e)
        return {"planned": 0, "sent": 0}
    for delivery_id in due:
        deliver.apply_async(args=(delivery_id,), queue=CONTROL_QUEUE)
    if planned or due:
        log.info("alerts: %d deliveries planned, %d handed out", len(planned), len(due))
    return {"planned": len(planned), "sent": len(due)}


@app.task(
    name=DELIVER_TASK,
    bind=True,
    queue=CONTROL_QUEUE,
    acks_late=True,
    max_retries=None,  # bounded by alerts.max_attempts, counted in Postgres
    ignore_result=True,
)
def deliver(self: Task, delivery_id: int) -> str:
    """POST one delivery; on a temporary failure retry later, else record a dead letter."""
    settings = settings_of(app).alerts
    now = datetime.now(UTC)
    with _db().connection() as conn:
        delivery = alert_store.claim(conn, delivery_id, now=now, lease_seconds=_lease(settings))
    if delivery is None:
        return "not pending"  # sent or dead already (a duplicate task)
    hook = configured(settings).get(delivery.webhook)
    where = {"delivery": delivery_id, "webhook": hook.display if hook else delivery.webhook}
    try:
        if hook is None:
            raise errors.PermanentError(
                f"webhook {delivery.webhook} is no longer configured; re-add it under [alerts]"
            )
        body = alerts.body(
            hook.kind,
            alerts.from_json(delivery.notification),
            now=now,
            max_findings=settings.max_findings,
        )
        webhooks.post(hook, body, timeout=settings.timeout_seconds)
    except errors.TemporaryError as e:
        if delivery.attempts < settings.max_attempts:
            delay = alerts.retry_delay(
                delivery.attempts,
                base=settings.retry_base_seconds,
                cap=settings.retry_max_seconds,
            )
            retry_at = now + timedelta(seconds=delay + _lease(settings))  # Celery retries first
            with _db().connection() as conn:
                alert_store.failed(conn, delivery_id, error=str(e), now=now, retry_at=retry_at)
            log.warning("alert not delivered (attempt %d), retried in %.0fs: %s",
                        delivery.attempts, delay, e, extra=where)  # fmt: skip
            raise self.retry(countdown=delay) from None
        _dead(delivery_id, str(e), now, where)
        return "dead"
    except errors.PermanentError as e:
        _dead(delivery_id, str(e), now, where)
        return "dead"
    with _db().connection() as conn:
        alert_store.sent(conn, delivery_id, now=datetime.now(UTC))
    log.info("alert delivered", extra=where)
    return "sent"


def _dead(delivery_id: int, error: str, now: datetime, where: dict[str, Any]) -> None:
    with _db().connection() as conn:
        alert_store.failed(conn, delivery_id, error=error, now=now, retry_at=None)
    log.error("alert given up (dead letter in alert_dead_letters): %s", error, extra=where)


def _schedule() -> dict[str, dict[str, Any]]:
    settings = settings_of(app).alerts
    if not configured(settings):
        return {}  # nothing to send to: succeeded scans only leave their outbox row
    return {
        "alerts-dispatch": {
            "task": DISPATCH_TASK,
            "schedule": settings.interval_seconds,
            "options": {"queue": CONTROL_QUEUE, "expires": settings.interval_seconds * 2},
        }
    }


app.conf.beat_schedule = {**(app.conf.beat_schedule or {}), **_schedule()}
