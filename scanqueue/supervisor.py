"""Keep the farm's roles running: restart a role that dies, with backoff; give up on a crash loop.

Why: ``scanqueue run`` is a farm of processes (worker, beat, watcher, Flower).
One of them dying, by an OOM kill or a bug, must not stall the farm silently
(a dead beat sends no collect again: scans stay ``running`` and their Jobs and
Secrets stay in the clusters) nor stop it for good. The supervisor notices the
death, says which role died and how (signal or exit code), restarts it after a
backoff that doubles with each recent crash, and says so. A role that keeps
crashing (``max_crashes`` within ``window_seconds``) is a fault a restart will
not mend: the supervisor raises ``CrashLoopError`` naming the role, its last
exit and its log file, and the farm stops with exit code 1.

What it must never do:
- restart a role without first killing what is left of its process group (a
  dead worker's pool processes would hold their tasks);
- loop forever on a role that cannot start;
- print a log line that could carry a credential (it prints the log's path
  and a tail the role itself wrote through ``scanqueue.logs``' redaction).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from scanqueue import errors, processes


class CrashLoopError(errors.PermanentError):
    """A role crashed too often; the message names it, its last exit and its log file."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """When to restart a role that died, and when to give up."""

    first_delay_seconds: float = 1.0  # wait before the first restart; doubles per recent crash
    max_delay_seconds: float = 30.0  # the backoff never waits longer than this
    max_crashes: int = 5  # this many crashes of one role within window_seconds: give up
    window_seconds: float = 300.0  # crashes older than this are forgotten


def recent(crashes: Sequence[float], *, now: float, window: float) -> list[float]:
    """The crash times within ``window`` seconds before ``now``."""
    return [t for t in crashes if now - t <= window]


def delay(recent_crashes: int, policy: Policy) -> float:
    """Seconds to wait before restarting after the ``recent_crashes``-th recent crash (1-based)."""
    exponent = max(0, recent_crashes - 1)
    return float(min(policy.max_delay_seconds, policy.first_delay_seconds * 2**exponent))


def gives_up(recent_crashes: int, policy: Policy) -> bool:
    """Whether this many crashes within the window is a crash loop."""
    return recent_crashes >= policy.max_crashes


@dataclasses.dataclass
class _Role:
    process: processes.Process
    crashes: list[float] = dataclasses.field(default_factory=list)
    restart_at: float | None = None  # set while the role waits for its restart
    restarts: int = 0


class Supervisor:
    """Watches ``roles`` (started ``processes.Process``); call ``check()`` about once a second.

    ``say(line)`` reports each death and restart (the farm's stdout).
    """

    def __init__(
        self,
        roles: Sequence[processes.Process],
        *,
        say: Callable[[str], None],
        policy: Policy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._roles = [_Role(process) for process in roles]
        self._say = say
        self._policy = policy or Policy()
        self._clock = clock

    def restarts(self) -> dict[str, int]:
        """How often each role was restarted, by name."""
        return {role.process.name: role.restarts for role in self._roles}

    def check(self) -> None:
        """Notice deaths, restart roles whose backoff has passed; ``CrashLoopError`` to give up."""
        now = self._clock()
        for role in self._roles:
            process = role.process
            if role.restart_at is None and not process.running:
                self._died(role, now)
            elif role.restart_at is not None and now >= role.restart_at:
                role.restart_at = None
                role.restarts += 1
                try:
                    process.start()
                except OSError as e:  # its program vanished, no fds left: a crash like any other
                    self._say(f"scanqueue: {process.name} could not be started: {e}")
                    self._died(role, now)
                    continue
                self._say(f"scanqueue: {process.name} restarted (pid {process.pid}, "
                          f"restart {role.restarts})")  # fmt: skip

    def _died(self, role: _Role, now: float) -> None:
        process = role.process
        how = process.exit_reason()
        pid = process.pid
        lived = now - process.started_at
        process.stop(5)  # what is left of its group (pool processes) goes with it
        role.crashes = [*recent(role.crashes, now=now, window=self._policy.window_seconds), now]
        count = len(role.crashes)
        if gives_up(count, self._policy):
            raise CrashLoopError(
                f"{process.name} died {count} times within {self._policy.window_seconds:.0f}s, "
                f"last {how} (pid {pid}); not restarting it again. Its log ({process.log}) "
                f"ends:\n{process.tail()}"
            )
        wait = delay(count, self._policy)
        role.restart_at = now + wait
        limit = f"{self._policy.max_crashes} allowed within {self._policy.window_seconds:.0f}s"
        self._say(
            f"scanqueue: {process.name} died: {how} (pid {pid}, after {lived:.0f}s); "
            f"restarting in {wait:g}s (crash {count}, {limit}); log {process.log}"
        )
