"""Where each cluster's scans stand, read from Redis: so that a stalled farm is visible.

A farm whose collects stopped (beat died, the cluster's API fails) looks
idle: workers healthy, queues empty. What shows the stall is time: scans in
flight that get older while no collect pass completes. This module records
when each cluster's last collect and sweep completed (written by the tasks)
and reads, per cluster: scans queued (in the Celery queue), waiting (for an
in-flight slot), in flight (slots held), the age of the oldest one in
flight, and the time of the last collect and sweep. ``scanqueue status`` and
the worker's metrics both read it here.

``scanqueue:status:<cluster>`` is a hash: ``last_collect``, ``last_sweep``
(Unix seconds), ``scan_tasks`` and ``collect_tasks`` (scan and collect_job task
messages received by workers, redeliveries included: what a burst costs the broker).

It must never block on a Redis that does not answer (the client has
timeouts), and it stores times and counts only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

import redis

from scanqueue import dedupe, errors
from scanqueue.scans import pending

_T = TypeVar("_T")
# kombu's Redis transport keeps priorities of queue Q in lists "Q\x06\x16<n>"
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
STALL_INTERVALS = 5  # collect intervals without a collect, Jobs in flight: a stall


def status_key(cluster: str) -> str:
    return f"{dedupe.PREFIX}status:{cluster}"


@dataclasses.dataclass(frozen=True)
class ClusterStatus:
    """One cluster's scans at ``now`` (Unix seconds); times are None when never seen."""

    cluster: str
    queued: int
    waiting: int
    in_flight: int
    oldest_in_flight_seconds: float | None
    last_collect: float | None
    last_sweep: float | None
    scan_tasks: int
    now: float

    def since_collect(self) -> float | None:
        return None if self.last_collect is None else max(0.0, self.now - self.last_collect)

    def stalled(self, *, collect_interval: float, intervals: int = STALL_INTERVALS) -> bool:
        """Jobs in flight and no collect completed for ``intervals`` collect intervals.

        Pure. A cluster never collected counts from its oldest Job in flight.
        """
        if self.in_flight == 0:
            return False
        limit = intervals * collect_interval
        waited = self.since_collect()
        if waited is None:
            waited = self.oldest_in_flight_seconds or 0.0
        return waited > limit


def record(conn: redis.Redis, *, cluster: str, what: str, now: float) -> None:
    """Record that a ``what`` pass (``collect`` or ``sweep``) of ``cluster`` ended at ``now``."""
    _call(lambda: conn.hset(status_key(cluster), f"last_{what}", repr(now)), f"record {what}")


def count_scan_task(conn: redis.Redis, *, cluster: str) -> None:
    """Count one scan-task message received for ``cluster``."""
    count_task(conn, cluster=cluster, what="scan_tasks")


def count_task(conn: redis.Redis, *, cluster: str, what: str) -> None:
    """Count one task message of kind ``what`` (``scan_tasks``, ``collect_tasks``) received."""
    _call(lambda: conn.hincrby(status_key(cluster), what, 1), f"count {what}")


def read(
    conn: redis.Redis, *, clusters: Sequence[str], queues: Sequence[str], now: float
) -> list[ClusterStatus]:
    """The status of each of ``clusters`` (``queues``: their Celery queue names, same order)."""
    pipe = conn.pipeline(transaction=False)
    for cluster, queue in zip(clusters, queues, strict=True):
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
        pipe.zcard(dedupe.jobs_key(cluster))
        pipe.zrange(dedupe.jobs_key(cluster), 0, 0, withscores=True)
        pipe.hgetall(status_key(cluster))
    answers = cast(list[object], _call(pipe.execute, "read the farm's status"))
    per = len(_PRIORITY_SUFFIXES) + 3
    found = []
    for i, cluster in enumerate(clusters):
        row = answers[i * per : (i + 1) * per]
        queued = sum(cast(int, n) for n in row[: len(_PRIORITY_SUFFIXES)])
        in_flight = cast(int, row[-3])
        oldest = cast(list[tuple[str, float]], row[-2])
        fields = cast(dict[str, str], row[-1])
        found.append(
            ClusterStatus(
                cluster=cluster,
                queued=queued,
                waiting=pending.waiting(conn, cluster=cluster),
                in_flight=in_flight,
                oldest_in_flight_seconds=max(0.0, now - oldest[0][1]) if oldest else None,
                last_collect=_float(fields.get("last_collect")),
                last_sweep=_float(fields.get("last_sweep")),
                scan_tasks=int(fields.get("scan_tasks") or 0),
                now=now,
            )
        )
    return found


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _call(operation: Callable[[], _T], what: str) -> _T:
    try:
        return operation()
    except redis.RedisError as e:
        raise errors.TemporaryError(f"Redis: cannot {what}: {e}; is Redis up?") from e
