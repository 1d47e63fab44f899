"""scanqueue.processes with real programs: how a process ended in words, its fresh output after
a restart, a stop that leaves nothing of its group, and a launcher whose death takes its
children with it (PR_SET_PDEATHSIG), even when SIGKILLed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scanqueue import processes


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _wait(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_exit_reasons_name_the_signal_or_the_code(tmp_path: Path) -> None:
    code = processes.Process("a", [sys.executable, "-c", "raise SystemExit(4)"], tmp_path / "a.log")
    code.start().proc.wait(10)  # type: ignore[union-attr]
    assert code.exit_reason() == "exited with 4"
    killed = processes.Process("b", ["sleep", "30"], tmp_path / "b.log").start()
    assert killed.exit_reason() == "running"
    killed.kill(signal.SIGKILL)
    assert killed.exit_reason() == "killed by SIGKILL"
    assert processes.Process("c", ["true"], tmp_path / "c.log").exit_reason() == "not started"


def test_a_restart_appends_to_the_log_and_fresh_output_is_the_new_run_only(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; print('run', time.time_ns(), flush=True)"]
    process = processes.Process("p", argv, tmp_path / "p.log")
    process.start().proc.wait(10)  # type: ignore[union-attr]
    first = process.output()
    process.start().proc.wait(10)  # type: ignore[union-attr]
    assert process.output().startswith(first)
    assert process.output(fresh=True).startswith("run ") and first not in process.output(fresh=True)


def test_stop_leaves_nothing_of_the_group_and_wait_ready_names_an_early_exit(
    tmp_path: Path,
) -> None:
    process = processes.Process(
        "group", ["sh", "-c", "trap '' TERM; sleep 300 & echo child $!; wait"], tmp_path / "g.log"
    ).start()
    _wait(lambda: "child" in process.output())
    child = int(process.output().split()[1])
    assert process.children() == [child]
    process.stop(timeout=1)  # both ignore SIGTERM: SIGKILL to the group after the timeout
    assert process.exit_reason() == "killed by SIGKILL"
    _wait(lambda: not _alive(child))

    failing = processes.Process("bad", ["sh", "-c", "echo no config here; exit 2"],
                                tmp_path / "bad.log").start()  # fmt: skip
    with pytest.raises(processes.ExitedError, match=r"bad exited with 2 while starting .*\n"
                       r"no config here"):  # fmt: skip
        failing.wait_ready(lambda: False, what="its port")


def test_children_die_with_their_launcher_even_when_it_is_sigkilled(tmp_path: Path) -> None:
    log = str(tmp_path / "c.log")
    launcher = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from scanqueue import processes; "
         f"p = processes.Process('c', ['sleep', '300'], Path({log!r})).start(); "
         "print(p.pid, flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert launcher.stdout is not None
    child = int(launcher.stdout.readline())
    assert _alive(child)
    launcher.kill()
    launcher.wait(10)
    _wait(lambda: not _alive(child))


def test_free_ports_are_below_the_ephemeral_range_and_bindable() -> None:
    """free_port hands out ports below the kernel's ephemeral range (outgoing connections
    take theirs from it, and could take a port between its check and a server's bind)."""
    import socket

    low = processes._ephemeral_low()
    ports = {processes.free_port() for _ in range(50)}
    assert all(processes._LOWEST_PORT <= port < low for port in ports)
    assert len(ports) > 40  # picked at random, not one after another from a fixed start
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports.pop()))
