"""Local processes: start one, wait until it is ready, say how it ended, stop its whole group.

Why: ``scanqueue run`` (the farm's roles), the embedded demo (registry, Redis,
PostgreSQL) and the tests (workers, watchers, services) all start local
programs and must never leave one behind. This is the one place that knows
how: each process in its own session (process group), its output appended to
a log file, told by the kernel to die with its launcher (Linux
``PR_SET_PDEATHSIG``, so even a SIGKILLed launcher leaves nothing running),
stopped group by group (SIGTERM, then SIGKILL).

What it must never do:
- know what a role or a service is (``roles`` builds command lines, callers
  decide what "ready" means);
- run anything but ``setsid``, the identity change and ``prctl`` between fork
  and exec: the parent may run threads (the emulator), so only
  async-signal-safe work is allowed there;
- listen or connect anywhere but loopback (``free_port`` binds 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from scanqueue import errors


class ExitedError(errors.PermanentError):
    """A process exited while it was starting; the message has its exit and its log's tail."""


class NotReadyError(errors.TemporaryError):
    """A process did not become ready in time; the message has its log's tail."""


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, loaded in the parent: dlopen after fork (with threads running) may hang."""
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl() if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def child_setup(
    *, uid: int | None = None, gid: int | None = None, death_signal: int = signal.SIGTERM
) -> Callable[[], None]:
    """A ``preexec_fn``: a new session; drop to ``gid``/``uid`` (as root); then, on Linux,
    ``death_signal`` when the launcher dies, even by SIGKILL (set after the identity change,
    which clears it)."""

    def setup() -> None:  # pragma: no cover - runs in the child between fork and exec
        os.setsid()
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, death_signal)

    return setup


def describe_exit(returncode: int | None) -> str:
    """How a process ended, in words: ``killed by SIGKILL``, ``exited with 1``, ``running``."""
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with {returncode}"


@dataclasses.dataclass
class Process:
    """One local program in its own process group, its output appended to ``log``.

    ``env`` None inherits this process's environment. ``uid``/``gid`` drop
    privileges (as root). ``death_signal`` is what the kernel sends it when
    the launcher dies; ``stop_signal`` is what ``stop`` sends first.
    """

    name: str
    argv: Sequence[str]
    log: Path
    env: Mapping[str, str] | None = dataclasses.field(default=None, repr=False)
    cwd: Path | None = None
    uid: int | None = None
    gid: int | None = None
    death_signal: int = signal.SIGTERM
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen[bytes] | None = dataclasses.field(default=None, repr=False)
    started_at: float = 0.0  # time.monotonic() of the last start
    log_offset: int = 0  # the log's size when it last started: ``output(fresh=True)`` reads on

    def start(self) -> Process:
        """Start (or start again) the program; its output is appended to ``log``."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.log_offset = out.tell()
            self.proc = subprocess.Popen(
                list(self.argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if self.env is None else dict(self.env),
                cwd=self.cwd,
                preexec_fn=child_setup(  # noqa: PLW1509 - setsid, setuid and prctl only
                    uid=self.uid, gid=self.gid, death_signal=self.death_signal
                ),
            )
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def exit_reason(self) -> str:
        """``killed by SIGKILL``, ``exited with 1``, ``running`` or ``not started``."""
        return "not started" if self.proc is None else describe_exit(self.proc.poll())

    def output(self, *, fresh: bool = False) -> str:
        """The log's text; ``fresh``: only what the last start wrote."""
        try:
            with self.log.open("rb") as f:
                if fresh:
                    f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.output().splitlines()[-lines:]) or "(empty log)"

    def children(self) -> list[int]:
        """Pids of the live processes of its group other than the leader (pool processes...)."""
        if self.proc is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.proc.pid:
                continue
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            # after the command: state, ppid, pgrp
            if fields and fields[0] != "Z" and int(fields[2]) == self.proc.pid:
                found.append(int(entry.name))
        return sorted(found)

    def kill(self, sig: int = signal.SIGKILL, *, group: bool = True) -> None:
        """Send ``sig`` to the whole group (or the leader only); reap it when it was SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        """``stop_signal`` to the group, SIGKILL to what is left after ``timeout``; reap."""
        if self.proc is None:
            return
        group = self.proc.pid  # setsid: the group id is the leader's pid
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        # pool children, helpers: nothing of the group survives its leader
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
        self.proc.wait()

    def wait_ready(self, check: Callable[[], bool], *, what: str, timeout: float = 90.0) -> None:
        """Poll ``check`` until true. ``ExitedError`` if the process ends first,
        ``NotReadyError`` after ``timeout`` seconds; both carry its log's tail."""
        deadline = time.monotonic() + timeout
        while not check():
            if not self.running:
                raise ExitedError(
                    f"{self.name} {self.exit_reason()} while starting ({what}); "
                    f"its log ({self.log}):\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise NotReadyError(
                    f"{self.name} did not become ready within {timeout:.0f}s ({what}); "
                    f"its log ({self.log}):\n{self.tail()}"
                )
            time.sleep(0.1)

    def wait_port(self, port: int, *, timeout: float = 30.0) -> None:
        """Wait until something accepts connections on 127.0.0.1:``port``."""
        self.wait_ready(lambda: port_open(port), what=f"listening on 127.0.0.1:{port}",
                        timeout=timeout)  # fmt: skip


_LOWEST_PORT = 10000  # free_port's ports: from here up to the kernel's ephemeral range


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, below the kernel's ephemeral range.

    The port is only known free: the caller's server binds it a moment later. A port of
    the ephemeral range (what binding port 0 hands out) can meanwhile become the local
    end of any outgoing connection on the machine, and with a test suite in four
    processes opening thousands of them, that happened (a worker's metrics server failed
    with "Address already in use"). Below the range, only another server picking the same
    port at random, before either binds, could take it.
    """
    low = _ephemeral_low()
    for _ in range(64):
        port = random.randrange(_LOWEST_PORT, low) if low > _LOWEST_PORT + 1000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a crowded range: any
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux's default: 32768)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts a TCP connection on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def http_ok(url: str, *, timeout: float = 2.0) -> bool:
    """Whether ``GET url`` (a loopback http URL we started) answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - ours
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False
