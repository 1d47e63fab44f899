"""``scanqueue run`` / ``scanqueue demo`` as real subprocesses, read line by line.

``farm_command`` starts the command with the test's Redis and fresh Postgres
database (``SCANQUEUE_BROKER_URL``/``SCANQUEUE_DATABASE_URL``), a ``HOME``
without a kubeconfig and no ``scanqueue.toml`` in its working directory, so
it takes the embedded default. Its stdout is collected by a thread; the test
waits for banner lines with ``wait_line``. Whatever is still running at the
end of the test is stopped (SIGTERM, then SIGKILL of its group).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class FarmCommand:
    """A running ``scanqueue run``/``demo``: its lines so far, its state directory."""

    proc: subprocess.Popen[str]
    state: Path
    lines: list[str] = dataclasses.field(default_factory=list)
    stderr: Path | None = None
    _reader: threading.Thread | None = None

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, *, timeout: float = 120.0) -> re.Match[str]:
        """The first stdout line matching ``pattern`` (waits for it); AssertionError if none."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                found = regex.search(line)
                if found:
                    return found
            if self.proc.poll() is not None and self._reader is not None:
                self._reader.join(5)
                for line in self.lines:
                    if regex.search(line):
                        return regex.search(line)  # type: ignore[return-value]
                raise AssertionError(
                    f"exited {self.proc.returncode} before a line matched {pattern!r}:\n"
                    f"{self.output()}\n{self.errors()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no line matched {pattern!r} in {timeout}s:\n{self.output()}")
            time.sleep(0.1)

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr else ""

    def wait(self, timeout: float = 120.0) -> int:
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(10)
        return int(code)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(10)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes whose command line, environment or working directory
    contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().split()[2]
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        # cwd: redis-server rewrites its title over argv and environ, but works in --dir
        if state != "Z" and (text in cmdline or text in environ or text in cwd):
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.fixture
def farm_command(
    tmp_path: Path, redis_url: str, database_url: str
) -> Iterator[Callable[..., FarmCommand]]:
    """Start ``scanqueue ARGS...`` on the embedded default: ``farm_command("demo", env={...})``."""
    started: list[FarmCommand] = []
    states: list[Path] = []

    def start(*args: str, env: dict[str, str] | None = None) -> FarmCommand:
        home = tmp_path / f"home-{len(started)}"
        home.mkdir()
        # not under tmp_path (0700): a private PostgreSQL runs as another user when we are root
        state = Path(tempfile.mkdtemp(prefix="sq-run-state-"))
        os.chmod(state, 0o755)
        states.append(state)
        dropped = ("SCANQUEUE_", "FLOWER_", "SQ_", "KUBECONFIG")
        base = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
        full_env = {
            **base,
            "HOME": str(home),
            "SCANQUEUE_BROKER_URL": redis_url,
            "SCANQUEUE_DATABASE_URL": database_url,
            **(env or {}),
        }
        stderr = tmp_path / f"stderr-{len(started)}.txt"
        with stderr.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "scanqueue.cli", *args, "--flower-port", "0",
                 "--state-dir", str(state)],
                stdout=subprocess.PIPE, stderr=err, text=True, cwd=home, env=full_env,
                start_new_session=True,
            )  # fmt: skip
        command = FarmCommand(proc, state, stderr=stderr)
        command._reader = threading.Thread(target=command.read, daemon=True)
        command._reader.start()
        started.append(command)
        return command

    yield start
    for command in started:
        command.stop()
    for state in states:
        shutil.rmtree(state, ignore_errors=True)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text at ``url`` as {(name, sorted labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def labels(**values: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(values.items()))
