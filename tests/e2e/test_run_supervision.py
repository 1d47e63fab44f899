"""``scanqueue run`` keeps every role running: a SIGKILLed role is named, restarted, and the farm
finishes its work.

Two emulated clusters, three private images each. The emulators fail every
read of a scan pod's log until the test says otherwise, so the scan Jobs run
and finish but cannot be collected: Jobs (and their credential Secrets) are in
flight in both clusters when the roles die. First every process of the worker
(pool processes, then its main process) and beat are SIGKILLed, then the
watcher and Flower. The farm's output must name each death (by signal) and
each restart; once the log reads work again, every scan completes, no Job and
no Secret is left in either cluster, and no digest was published twice.

A role killed again and again (the watcher, five times) is not restarted
forever: the farm stops with exit code 1, naming the role, its last death and
its log, after backing off 1, 2, 4 and 8 seconds.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import reliability_fixtures as rel
from tests.support import services, sim_fixtures
from tests.support.farm_fixtures import SCAN_NAMESPACE, write_settings
from tests.support.run_fixtures import FarmCommand, processes_mentioning

REPORT = Path(__file__).parents[1] / "data" / "trivy" / "node-alpine-3.19.json"
IMAGES_PER_CLUSTER = 3


def _populate(sim: sim_fixtures.SimCluster, registry: services.Registry, cluster: str) -> set[str]:
    """Three pods with private images of their own; every scan pod's log read fails (500)."""
    for name in (rel.NS, SCAN_NAMESPACE):
        sim.create(rel.namespace(name))
    sim.create(rel.pull_secret("regcred", rel.dockerconfig(registry.host, REGISTRY_USER,
                                                           REGISTRY_PASSWORD)))  # fmt: skip
    digests = set()
    for i in range(IMAGES_PER_CLUSTER):
        repository = f"{cluster}/app-{i}"
        digest = registry.push(repository, "1", content=f"supervision {cluster} {i}")
        image = f"{registry.host}/{repository}:1"
        sim.set_digest(image, digest)
        sim.set_report(digest, REPORT)
        sim.create(rel.pod(f"app-{i}", image, secrets=["regcred"]))
        digests.add(digest)
    sim.faults.fail(500, verb="get", resource="pods/log", count=-1)
    return digests


def _children(pid: int) -> dict[int, tuple[int, str]]:
    """Live processes whose parent is ``pid``: {pid: (process group, command line)}."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found[int(entry.name)] = (int(fields[2]), cmdline)
    return found


def _role(command: FarmCommand, word: str) -> int:
    """The pid of the role of ``scanqueue run`` whose command line has ``word`` as an argument."""
    for pid, (_, cmdline) in _children(command.proc.pid).items():
        if word in cmdline.split():
            return pid
    raise AssertionError(f"no role {word!r} runs under scanqueue run:\n{command.output()}")


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def _wait(what: str, check: Callable[[], object], command: FarmCommand, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert command.proc.poll() is None, f"scanqueue run exited:\n{command.output()}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s\n{command.output()}"
        time.sleep(0.3)


def _died_and_restarted(command: FarmCommand, role: str, old_pid: int) -> None:
    command.wait_line(rf"^scanqueue: {role} died: killed by SIGKILL \(pid {old_pid}\b", timeout=30)
    command.wait_line(rf"^scanqueue: {role} restarted \(pid \d+", timeout=60)


def test_every_role_sigkilled_with_jobs_in_flight_is_restarted_and_every_scan_completes(
    farm_command: Callable[..., FarmCommand],
    sim_factory: Callable[..., sim_fixtures.SimCluster],
    registry: services.Registry,
    redis_url: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    sims = {"alpha": sim_factory(name="alpha"), "beta": sim_factory(name="beta")}
    digests = {name: _populate(sim, registry, name) for name, sim in sims.items()}
    settings = write_settings(
        tmp_path / "scanqueue.toml",
        database_url=database_url,
        redis_url=redis_url,
        clusters=[(name, sim.kubeconfig) for name, sim in sims.items()],
        insecure=[registry.host],
    )
    monitor = rel.RedisMonitor(redis_url)
    command = farm_command("run", env={"SCANQUEUE_CONFIG": str(settings),
                                       "FLOWER_BASIC_AUTH": "ops:supervision-pw"})  # fmt: skip
    command.wait_line(r"^\s+flower\s+http://", timeout=120)

    def in_flight() -> bool:
        return all(
            len(
                [j for j in sim.list("Job", SCAN_NAMESPACE) if j.get("status", {}).get("succeeded")]
            )
            == IMAGES_PER_CLUSTER
            for sim in sims.values()
        )

    _wait("every scan Job finished, none collected", in_flight, command, timeout=120)

    # the worker's children (its pool processes), then the worker itself, and beat
    worker = _role(command, "worker")
    pool = [pid for pid, _ in _children(worker).items()]
    assert pool, "the worker has no pool process"
    beat = _role(command, "beat")
    for pid in (*pool, beat):
        _kill(pid)
    _died_and_restarted(command, "beat", beat)
    log = command.state / "logs" / "worker.log"
    _wait("the worker logs its pool processes' deaths",
          lambda: "SIGKILL" in log.read_text(errors="replace"), command, timeout=30)  # fmt: skip
    _kill(worker)
    _died_and_restarted(command, "worker", worker)
    assert not [pid for pid in pool if Path(f"/proc/{pid}").exists()
                and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]]  # fmt: skip

    watcher, flower = _role(command, "watch"), _role(command, "flower")
    _kill(watcher)
    _kill(flower)
    _died_and_restarted(command, "watcher", watcher)
    _died_and_restarted(command, "flower", flower)

    for sim in sims.values():
        sim.faults.clear()

    def finished() -> bool:
        with psycopg.connect(database_url, autocommit=True) as conn:
            rows = conn.execute("SELECT digest, status FROM scans").fetchall()
        return sorted(rows) == sorted((d, "succeeded") for ds in digests.values() for d in ds)

    _wait("every scan stored, one row per digest", finished, command, timeout=120)
    _wait("no scan Job or Secret left in either cluster",
          lambda: not any(rel.leftovers(sim) for sim in sims.values()), command,
          timeout=60)  # fmt: skip
    monitor.stop()
    published = monitor.scan_tasks()
    assert rel.one_task_per_digest(published) == {}
    assert {d for _, d in published} == {d for ds in digests.values() for d in ds}

    command.proc.send_signal(signal.SIGINT)
    assert command.wait(90) == 0
    assert processes_mentioning(str(command.state)) == []


def test_a_role_that_keeps_dying_stops_the_farm_with_exit_1_naming_it(
    farm_command: Callable[..., FarmCommand],
    sim: sim_fixtures.SimCluster,
    redis_url: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    sim.create(rel.namespace(SCAN_NAMESPACE))
    settings = write_settings(
        tmp_path / "scanqueue.toml",
        database_url=database_url,
        redis_url=redis_url,
        clusters=[("alpha", sim.kubeconfig)],
        insecure=[],
    )
    command = farm_command("run", env={"SCANQUEUE_CONFIG": str(settings),
                                       "FLOWER_BASIC_AUTH": "ops:crash-loop-pw"})  # fmt: skip
    command.wait_line(r"^\s+flower\s+http://", timeout=120)
    for crash in range(1, 6):
        watcher = _role(command, "watch")
        _kill(watcher)
        if crash < 5:
            command.wait_line(rf"^scanqueue: watcher restarted \(pid \d+, restart {crash}\)",
                              timeout=60)  # fmt: skip
    assert command.wait(90) == 1
    stopped = command.wait_line(r"^scanqueue: stopping the farm: (.*)").group(1)
    assert stopped.startswith(
        f"watcher died 5 times within 300s, last killed by SIGKILL (pid {watcher}); "
        "not restarting it again."
    )
    assert str(command.state / "logs" / "watcher.log") in stopped
    died = re.compile(r"scanqueue: watcher died: .* restarting in (\S+)s ")
    waits = [m.group(1) for line in command.lines if (m := died.match(line))]
    assert waits == ["1", "2", "4", "8"]  # the backoff doubles
    assert processes_mentioning(str(command.state)) == []
