"""The command line of each role of the farm: worker, beat, watcher, Flower.

Why: ``scanqueue run`` starts these roles, and the tests start the same roles
one by one (a worker SIGKILLed mid-task, a watcher with its metrics); when the
two wrote their own command lines they drifted (the tests' worker had no
``--quiet``, its beat lived elsewhere). Both now build them here, so a test of
a worker tests the worker ``scanqueue run`` starts.

What it must never do: start anything, read the environment or import Celery
(these are argument lists; ``processes`` runs them, the caller decides where).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from scanqueue import config

CELERY_APP = "workers.app"
CONTROL_QUEUE = "scanqueue.control"  # the same name as workers.app.CONTROL_QUEUE
WORKER_READY = " ready."  # a celery worker's log line once it consumes
BEAT_READY = "beat: Starting"  # celery beat's log line once its scheduler runs


def python() -> str:
    """The interpreter the roles run with: this one (same virtualenv, same packages)."""
    return sys.executable


def queues(settings: config.Settings) -> list[str]:
    """Every queue a farm's worker consumes: each cluster's scan queue, the control queue,
    and the rescan queue when rescans are on."""
    rescan = ["scanqueue.rescan"] if settings.rescan.enabled else []
    return [f"scan.{c.name}" for c in settings.clusters] + [CONTROL_QUEUE] + rescan


def worker(
    *,
    queues: Sequence[str],
    node: str,
    concurrency: int = 2,
    log_level: str = "INFO",
    metrics_port: int | None = None,
    metrics_address: str = "127.0.0.1",
    embedded_beat: Path | None = None,
    quiet: bool = True,
) -> list[str]:
    """``celery worker`` on ``queues`` as node ``node`` (``name@%h``), prefork pool, task events.

    ``embedded_beat``: also run beat inside the worker (``-B``) with its
    schedule file there; a farm runs beat as its own role instead, so that
    its death is seen.
    """
    argv = [python(), "-m", "celery", "-A", CELERY_APP, *(["--quiet"] if quiet else []),
            "worker", "-Q", ",".join(queues), "-c", str(concurrency), "--pool", "prefork",
            "-n", node, "-E", "-l", log_level, "--without-gossip", "--without-mingle"]  # fmt: skip
    if embedded_beat is not None:
        argv += ["-B", "-s", str(embedded_beat)]
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port), "--metrics-address", metrics_address]
    return argv


def beat(*, schedule: Path, log_level: str = "INFO") -> list[str]:
    """``celery beat``: the periodic collect, sweep and heartbeat; exactly one per farm."""
    return [python(), "-m", "celery", "-A", CELERY_APP, "beat", "-s", str(schedule),
            "-l", log_level]  # fmt: skip


def watcher(
    *,
    log_level: str = "INFO",
    clusters: Iterable[str] = (),
    metrics_port: int | None = None,
    metrics_address: str = "127.0.0.1",
    reevaluate_seconds: float | None = None,
) -> list[str]:
    """``scanqueue watch`` (all configured clusters unless ``clusters`` names some)."""
    argv = [python(), "-m", "scanqueue.cli", "watch",
            *[a for name in clusters for a in ("--cluster", name)],
            "--log-level", log_level]  # fmt: skip
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port), "--metrics-address", metrics_address]
    if reevaluate_seconds is not None:
        argv += ["--reevaluate-seconds", str(reevaluate_seconds)]
    return argv


def flower(*, address: str = "127.0.0.1", port: int) -> list[str]:
    """``celery flower`` on ``address:port`` (auth comes from the environment)."""
    return [python(), "-m", "celery", "-A", CELERY_APP, "flower",
            f"--address={address}", f"--port={port}"]  # fmt: skip


def exporter(*, address: str = "127.0.0.1", port: int, ttl_seconds: float = 15.0) -> list[str]:
    """``scanqueue exporter``: vulnerability metrics from Postgres; exactly one per farm."""
    return [python(), "-m", "scanqueue.cli", "exporter", "--address", address,
            "--port", str(port), "--ttl", str(ttl_seconds)]  # fmt: skip
