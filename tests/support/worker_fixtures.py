"""A real ``celery -A workers.app worker`` process, started and stopped by the test.

The thread-based ``celery.contrib.pytest`` worker runs the solo pool without
time limits and cannot show acks_late redelivery; a subprocess can, and it
can be SIGKILLed like a real worker. Its command line comes from
``scanqueue.roles`` and it runs as a ``scanqueue.processes.Process``: the
worker a test starts is the worker ``scanqueue run`` starts.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Self

import pytest

from scanqueue import processes, roles


@dataclasses.dataclass
class WorkerProcess:
    config_path: Path
    queues: Sequence[str]
    log: Path
    concurrency: int = 1
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    beat: bool = False  # embed celery beat (-B): collect and sweep run on their schedule
    process: processes.Process | None = None
    name: str = ""
    metrics_port: int | None = None  # serve Prometheus metrics (multiprocess dir beside the log)
    log_level: str = "INFO"

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return None if self.process is None else self.process.proc

    def argv(self) -> list[str]:
        return roles.worker(
            queues=self.queues,
            node=f"{self.name}@%h",
            concurrency=self.concurrency,
            log_level=self.log_level,
            metrics_port=self.metrics_port,
            embedded_beat=self.log.with_suffix(".beat") if self.beat else None,
            quiet=False,
        )

    def start(self, timeout: float = 60) -> Self:
        self.name = self.name or f"sq{os.getpid()}-{time.monotonic_ns() % 10**8}"
        env = {**os.environ, **self.env, "SCANQUEUE_CONFIG": str(self.config_path)}
        if self.metrics_port is not None:
            multiproc = self.log.with_suffix(".prometheus")
            multiproc.mkdir(exist_ok=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
        self.process = processes.Process("worker", self.argv(), self.log, env=env).start()
        process = self.process
        process.wait_ready(lambda: roles.WORKER_READY in process.output(fresh=True),
                           what="its 'ready.'", timeout=timeout)  # fmt: skip
        return self

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as a node dying would."""
        if self.process is not None:
            self.process.kill(signal.SIGKILL)

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it lingers."""
        if self.process is not None:
            self.process.stop(timeout)


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes: ``worker_factory(config_path, queues=[...])``."""
    started: list[WorkerProcess] = []

    def start(config_path: Path, *, queues: Sequence[str], concurrency: int = 1,
              env: dict[str, str] | None = None, beat: bool = False,
              log_level: str = "INFO") -> WorkerProcess:  # fmt: skip
        log = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess(config_path, queues, log, concurrency, dict(env or {}), beat,
                               log_level=log_level)  # fmt: skip
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()
