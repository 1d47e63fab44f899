"""The supervisor with real processes: a killed role is restarted after its backoff, what was
left of its process group goes first, and a role that keeps crashing stops the supervision
with a message naming the role, its last exit and its log."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from scanqueue import processes, supervisor

FAST = supervisor.Policy(first_delay_seconds=0.2, max_delay_seconds=1.0, max_crashes=3,
                         window_seconds=60.0)  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _until(check: object, keeper: supervisor.Supervisor, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not reached"
        keeper.check()
        time.sleep(0.05)


def test_a_killed_role_and_its_children_are_replaced_and_the_death_is_named(
    tmp_path: Path,
) -> None:
    # a leader with a child in its group, as a celery worker has its pool processes
    argv = ["sh", "-c", "sleep 300 & echo child $!; wait"]
    role = processes.Process("worker", argv, tmp_path / "worker.log").start()
    said: list[str] = []
    keeper = supervisor.Supervisor([role], say=said.append, policy=FAST)
    try:
        _until(lambda: "child" in role.output(), keeper)
        child = int(role.output().split()[1])
        first = role.pid
        assert first is not None
        role.kill(signal.SIGKILL, group=False)  # the leader only: its child lives on
        _until(lambda: role.running and role.pid != first, keeper)
        assert not _alive(child), "the dead role's child survived its restart"
        assert said[0].startswith(f"scanqueue: worker died: killed by SIGKILL (pid {first},")
        assert "restarting in 0.2s (crash 1," in said[0]
        assert str(tmp_path / "worker.log") in said[0]
        assert said[1] == f"scanqueue: worker restarted (pid {role.pid}, restart 1)"
        assert keeper.restarts() == {"worker": 1}
    finally:
        role.stop(5)


def test_a_role_that_keeps_crashing_stops_the_supervision_with_its_exit_and_log(
    tmp_path: Path,
) -> None:
    argv = [sys.executable, "-c", "import sys; print('bad settings: fix x'); sys.exit(3)"]
    role = processes.Process("watcher", argv, tmp_path / "watcher.log").start()
    said: list[str] = []
    keeper = supervisor.Supervisor([role], say=said.append, policy=FAST)
    started = time.monotonic()
    with pytest.raises(supervisor.CrashLoopError) as raised:
        _until(lambda: False, keeper)
    message = str(raised.value)
    assert message.startswith("watcher died 3 times within 60s, last exited with 3")
    assert str(tmp_path / "watcher.log") in message
    assert "bad settings: fix x" in message
    assert [line.split()[1:3] for line in said] == [
        ["watcher", "died:"],
        ["watcher", "restarted"],
    ] * 2
    assert "restarting in 0.4s (crash 2," in said[2]  # the backoff doubled
    assert time.monotonic() - started >= 0.6


def test_a_role_whose_program_vanished_counts_as_crashing_until_the_supervision_gives_up(
    tmp_path: Path,
) -> None:
    role = processes.Process("flower", ["sleep", "300"], tmp_path / "flower.log").start()
    said: list[str] = []
    keeper = supervisor.Supervisor([role], say=said.append, policy=FAST)
    role.argv = [str(tmp_path / "uninstalled-flower")]  # removed by an upgrade, say
    role.kill(signal.SIGKILL)
    with pytest.raises(supervisor.CrashLoopError, match="flower died 3 times"):
        _until(lambda: False, keeper)
    assert sum("could not be started" in line for line in said) == 2
