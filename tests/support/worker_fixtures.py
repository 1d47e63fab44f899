"""A real ``celery -A workers.app worker`` process, started and stopped by the test.

The thread-based ``celery.contrib.pytest`` worker runs the solo pool without
time limits and cannot show acks_late redelivery; a subprocess can, and it
can be SIGKILLed like a real worker.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest


@dataclasses.dataclass
class WorkerProcess:
    config_path: Path
    queues: Sequence[str]
    log: Path
    concurrency: int = 1
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    beat: bool = False  # embed celery beat (-B): collect and sweep run on their schedule
    proc: subprocess.Popen[bytes] | None = None
    name: str = ""

    def start(self, timeout: float = 60) -> WorkerProcess:
        self.name = self.name or f"sq{os.getpid()}-{time.monotonic_ns() % 10**8}"
        env = {**os.environ, **self.env, "SCANQUEUE_CONFIG": str(self.config_path)}
        start_at = self.log.stat().st_size if self.log.exists() else 0
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", "worker",
             "-Q", ",".join(self.queues), "-c", str(self.concurrency), "--pool", "prefork",
             "-n", f"{self.name}@%h", "--without-gossip", "--without-mingle",
             "-l", "INFO", "-E",
             *(["-B", "-s", str(self.log.with_suffix(".beat"))] if self.beat else [])],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"celery worker exited {self.proc.returncode}:\n{self.tail()}")
            if " ready." in self.log.read_text(errors="replace")[start_at:]:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"celery worker not ready within {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as a node dying would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes: ``worker_factory(config_path, queues=[...])``."""
    started: list[WorkerProcess] = []

    def start(config_path: Path, *, queues: Sequence[str], concurrency: int = 1,
              env: dict[str, str] | None = None, beat: bool = False) -> WorkerProcess:  # fmt: skip
        log = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess(config_path, queues, log, concurrency, dict(env or {}), beat)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()
