"""Heartbeats: proof, in Redis, that beat still sends and each worker still runs tasks.

Why: a process can be alive and answer pings while it has stopped doing its
work (beat's scheduler wedged, a worker whose pool runs nothing). A liveness
probe that only asks "is the process there" keeps such a farm "healthy"
forever while scans stay ``running``. So each role stamps the time it last did
its work, and ``docker/healthcheck.py --max-age N`` fails when the stamp is
older than N seconds:

- beat: every task beat publishes (collect, sweep, and a ``scanqueue.heartbeat``
  task every ``INTERVAL_SECONDS`` so that there is always one) stamps
  ``BEAT_KEY`` from the beat process;
- worker: every task a worker finishes, in its pool process, stamps
  ``worker_key(node)`` with the worker's node name (``--hostname``); the
  heartbeat task keeps an idle farm's workers stamping.

What it must never do: fail a task or a publish because Redis did not take a
stamp (a missing stamp is what the probe reports), or write more than one
stamp a second per process.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import signals

from scanqueue import config, dedupe
from workers.app import CONTROL_QUEUE, app, settings_of

TASK = "scanqueue.heartbeat"
INTERVAL_SECONDS = 10.0  # beat sends the heartbeat task this often
BEAT_KEY = "scanqueue:heartbeat:beat"
STAMP_TTL_SECONDS = 86_400  # a stamp nobody refreshes goes away after a day

log = logging.getLogger(__name__)


def worker_key(node: str) -> str:
    """The Redis key of the stamp of the worker named ``node`` (``name@host``)."""
    return f"scanqueue:heartbeat:worker:{node}"


class _Stamper:
    """Writes a key's stamp at most once a second; one per process (after fork: its own)."""

    def __init__(self) -> None:
        self._client: redis.Redis | None = None
        self._last: dict[str, float] = {}
        self.in_beat = False  # set in the beat process: its publishes stamp BEAT_KEY

    def stamp(self, key: str) -> None:
        now = time.time()
        if now - self._last.get(key, 0.0) < 1.0:
            return
        self._last[key] = now
        try:
            if self._client is None:
                broker = settings_of(app).broker
                self._client = dedupe.client(broker.url, password=config.broker_password(broker))
            self._client.set(key, f"{now:.3f}", ex=STAMP_TTL_SECONDS)
        except (redis.RedisError, OSError) as e:
            log.warning("heartbeat %s not written: %s", key, type(e).__name__)


_stamper = _Stamper()


def age(client: redis.Redis, key: str, *, now: float) -> float | None:
    """Seconds since ``key`` was stamped; None when it never was (or its stamp expired)."""
    raw = client.get(key)
    if raw is None:
        return None
    return max(0.0, now - float(raw))


@app.task(name=TASK, queue=CONTROL_QUEUE, ignore_result=True)
def heartbeat() -> None:
    """Nothing to do: finishing it stamps the worker that ran it (``task_postrun``)."""


@signals.beat_init.connect
def _beat_started(sender: Any = None, **_: Any) -> None:
    """In beat: add the heartbeat to the schedule, stamp each publish from now on."""
    _stamper.in_beat = True
    sender.scheduler.update_from_dict(
        {TASK: {"task": TASK, "schedule": INTERVAL_SECONDS,
                "options": {"queue": CONTROL_QUEUE, "expires": INTERVAL_SECONDS * 3}}}
    )  # fmt: skip
    _stamper.stamp(BEAT_KEY)


@signals.after_task_publish.connect
def _published(**_: Any) -> None:
    if _stamper.in_beat:
        _stamper.stamp(BEAT_KEY)


@signals.task_postrun.connect
def _ran(task: Any = None, **_: Any) -> None:
    node = getattr(getattr(task, "request", None), "hostname", None)
    if node:
        _stamper.stamp(worker_key(str(node)))
