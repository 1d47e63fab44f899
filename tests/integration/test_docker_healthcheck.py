"""docker/healthcheck.py against the real things it checks: a worker, Redis, Flower, metrics.

The script runs as Docker runs it (a subprocess with the container's
environment), given the command of the role to check after ``--``. Flower is
started with the very command compose.yaml gives it, so these tests also show
that this command serves the API only with basic auth.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import celery
import prometheus_client
import pytest
import redis
import yaml

from scanqueue import processes, roles
from tests.support import ops_commands, services
from tests.support.worker_fixtures import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docker" / "healthcheck.py"
FLOWER_USER = "ops"
FLOWER_PASSWORD = "flower-canary-pw-51c2"


def _settings(tmp_path: Path, broker_url: str) -> Path:
    path = tmp_path / "scanqueue.toml"
    path.write_text(
        f'[broker]\nurl = "{broker_url}"\n'
        '[[clusters]]\nname = "alpha"\nkubeconfig = "/nonexistent"\n'
    )
    return path


def _env(config_path: Path) -> dict[str, str]:
    # the processes run outside the checkout (cwd = tmp_path), as in the image; the checkout
    # goes on the path because an editable install made before workers/ existed lacks it
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "SCANQUEUE_CONFIG": str(config_path), "PYTHONPATH": path}


def _health(config_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = _env(config_path)
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=config_path.parent,
    )


def test_worker_is_healthy_while_it_answers_pings_and_unhealthy_after(
    tmp_path: Path, redis_url: str, worker_factory: Callable[..., WorkerProcess]
) -> None:
    config_path = _settings(tmp_path, redis_url)
    worker = worker_factory(config_path, queues=["scan.alpha", "scanqueue.control"])
    command = ["celery", "-A", "workers.app", "worker", f"--hostname={worker.name}@%h"]

    alive = _health(config_path, *command)
    assert alive.returncode == 0, alive.stdout + alive.stderr
    assert "answered a ping" in alive.stdout

    worker.stop()
    dead = _health(config_path, *command)
    assert dead.returncode == 1, dead.stdout + dead.stderr
    assert "did not answer" in dead.stdout


def test_beat_is_healthy_only_while_the_broker_is_reachable(tmp_path: Path, redis_url: str) -> None:
    command = ["celery", "-A", "workers.app", "beat", "--schedule=/tmp/x"]
    up = _health(_settings(tmp_path, redis_url), *command)
    assert up.returncode == 0, up.stdout + up.stderr

    closed = tmp_path / "closed"
    closed.mkdir()
    password = "broker-canary-pw-9e1d"
    broker = f"redis://:{password}@127.0.0.1:{services.free_port()}/0"
    down = _health(_settings(closed, broker), *command)
    assert down.returncode == 1
    assert "broker unreachable" in down.stdout
    assert password not in down.stdout + down.stderr


def _health_max_age(config_path: Path, max_age: float, *command: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--max-age", str(max_age), "--", *command],
        env=_env(config_path), capture_output=True, text=True, timeout=60, check=False,
        cwd=config_path.parent,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def _until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_worker_whose_pool_stopped_working_is_unhealthy_though_it_answers_pings(
    tmp_path: Path, redis_url: str, worker_factory: Callable[..., WorkerProcess]
) -> None:
    config_path = _settings(tmp_path, redis_url)
    worker = worker_factory(config_path, queues=["scan.alpha", "scanqueue.control"])
    command = ["celery", "-A", "workers.app", "worker", f"--hostname={worker.name}@%h"]
    code, out = _health_max_age(config_path, 60, *command)
    assert code == 1, out
    assert "never finished a task" in out
    client = redis.Redis.from_url(redis_url)
    producer = celery.Celery(broker=redis_url)
    producer.send_task("scanqueue.heartbeat", queue="scanqueue.control")
    key = f"scanqueue:heartbeat:worker:{worker.name}@{socket.gethostname()}"
    _until("the worker stamped its heartbeat", lambda: client.get(key) is not None)
    code, out = _health_max_age(config_path, 60, *command)
    assert code == 0, out
    assert "finished a task" in out

    assert worker.process is not None
    pool = worker.process.children()
    assert pool
    for pid in pool:  # the pool hangs; the main process still answers pings
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(2.5)
        producer.send_task("scanqueue.heartbeat", queue="scanqueue.control")
        code, out = _health_max_age(config_path, 2, *command)
        assert code == 1, out
        assert "answered a ping but last finished a task" in out
        assert _health(config_path, *command).returncode == 0  # without --max-age: "alive"
    finally:
        for pid in pool:
            os.kill(pid, signal.SIGCONT)
        client.close()


def test_beat_that_stopped_publishing_is_unhealthy_though_the_broker_answers(
    tmp_path: Path, redis_url: str
) -> None:
    config_path = _settings(tmp_path, redis_url)
    argv = roles.beat(schedule=tmp_path / "beat-schedule")
    beat = processes.Process("beat", argv, tmp_path / "beat.log", env=_env(config_path))
    beat.start()
    client = redis.Redis.from_url(redis_url)
    try:
        _until(
            "beat stamped its heartbeat", lambda: client.get("scanqueue:heartbeat:beat") is not None
        )
        first = client.get("scanqueue:heartbeat:beat")
        # the collect of cluster alpha every 5 s (and the heartbeat task): each publish stamps
        _until("beat stamped again", lambda: client.get("scanqueue:heartbeat:beat") != first,
               timeout=20)  # fmt: skip
        command = ["celery", "-A", "workers.app", "beat", "--schedule=/tmp/x"]
        code, out = _health_max_age(config_path, 30, *command)
        assert code == 0, out
        assert "beat published a task" in out
        beat.kill(signal.SIGSTOP)  # wedged: alive, sends nothing
        time.sleep(3)
        code, out = _health_max_age(config_path, 2, *command)
        assert code == 1, out
        assert "beat last published a task" in out
        assert _health(config_path, *command).returncode == 0  # the broker still answers
    finally:
        beat.kill(signal.SIGCONT)
        beat.stop(10)
        client.close()


def _flower_command(port: int) -> list[str]:
    """compose.yaml's Flower command, on loopback and ``port``, its bind mounts read in place."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    service = compose["services"]["flower"]
    command = list(service["command"])
    assert ops_commands.problems(command) == []
    mounts = {v["target"]: str(ROOT / v["source"]) for v in service.get("volumes", [])
              if isinstance(v, dict) and v.get("type") == "bind"}  # fmt: skip
    for target, source in mounts.items():
        command = [a.replace(target, source) for a in command]
    command = [
        "--address=127.0.0.1" if a.startswith("--address=") else a
        for a in command
        if not a.startswith("--port=")
    ]
    return [*command, f"--port={port}"]


@pytest.fixture
def flower(tmp_path: Path, redis_url: str) -> Iterator[tuple[int, Path]]:
    """Flower started with compose.yaml's command and its basic-auth file, on a free port."""
    config_path = _settings(tmp_path, redis_url)
    port = services.free_port()
    auth_file = tmp_path / "flower-basic-auth"
    auth_file.write_text(f"{FLOWER_USER}:{FLOWER_PASSWORD}\n")
    env = {**_env(config_path), "SQ_FLOWER_BASIC_AUTH_FILE": str(auth_file)}
    process = processes.Process("flower", [sys.executable, "-m", *_flower_command(port)],
                                tmp_path / "flower.log", env=env, cwd=tmp_path)  # fmt: skip
    process.start()
    try:
        process.wait_ready(lambda: processes.http_ok(f"http://127.0.0.1:{port}/healthcheck"),
                           what="/healthcheck", timeout=60)  # fmt: skip
        yield port, config_path
    finally:
        process.stop(20)


def _status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_compose_flower_command_serves_the_api_only_with_basic_auth(
    flower: tuple[int, Path],
) -> None:
    port, _ = flower
    api = f"http://127.0.0.1:{port}/api/workers"
    assert _status(api) == 401
    assert _status(api, f"{FLOWER_USER}:wrong") == 401
    assert _status(api, f"{FLOWER_USER}:{FLOWER_PASSWORD}") == 200


def test_flower_is_healthy_while_it_answers(flower: tuple[int, Path]) -> None:
    port, config_path = flower
    command = ["celery", "-A", "workers.app", "flower", "--address=0.0.0.0", f"--port={port}"]
    result = _health(config_path, *command)
    assert result.returncode == 0, result.stdout + result.stderr
    assert FLOWER_PASSWORD not in result.stdout + result.stderr


def test_flower_on_a_closed_port_is_unhealthy(tmp_path: Path, redis_url: str) -> None:
    command = ["celery", "-A", "workers.app", "flower", f"--port={services.free_port()}"]
    result = _health(_settings(tmp_path, redis_url), *command)
    assert result.returncode == 1
    assert "unreachable" in result.stdout


def test_watcher_is_healthy_while_its_metrics_answer() -> None:
    health = ops_commands.load_healthcheck()
    port = services.free_port()
    registry = prometheus_client.CollectorRegistry()
    server, thread = prometheus_client.start_http_server(port, "127.0.0.1", registry=registry)
    try:
        healthy, why = health.check(["scanqueue", "watch", f"--metrics-port={port}"])
        assert healthy, why
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    healthy, why = health.check(["scanqueue", "watch", f"--metrics-port={port}"])
    assert not healthy
    assert "unreachable" in why


def _compose_command(service: str) -> list[str]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    command = list(compose["services"][service]["command"])
    assert ops_commands.problems(command) == []
    return command


def _start(
    command: list[str], config_path: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", *command],
            env={**_env(config_path), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=config_path.parent,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_compose_worker_command_consumes_every_configured_queue(
    tmp_path: Path, redis_url: str
) -> None:
    """compose.yaml's worker has no --queues: it must still serve scan.<cluster> and control;
    and it serves its metrics, pool processes' samples included, from its multiprocess dir."""
    config_path = _settings(tmp_path, redis_url)
    name = f"compose{services.unique_name('w')}"
    port = services.free_port()
    replaced = {
        "--hostname=": f"--hostname={name}@%h",
        "--concurrency=": "--concurrency=1",
        "--metrics-port=": f"--metrics-port={port}",
        "--metrics-address=": "--metrics-address=127.0.0.1",
    }
    command = [
        next((v for k, v in replaced.items() if a.startswith(k)), a)
        for a in _compose_command("worker")
    ]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert compose["services"]["worker"]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    multiproc = tmp_path / "metrics"  # compose's tmpfs, here
    multiproc.mkdir()
    proc = _start(command, config_path, tmp_path / "worker.log",
                  env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc)})  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            result = _health(config_path, *command)
            if result.returncode == 0:
                break
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, (
                result.stdout + (tmp_path / "worker.log").read_text()
            )
            time.sleep(0.5)
        probe = (
            "import json, socket; from workers.app import app; "
            f"r = app.control.inspect(destination=['{name}@' + socket.gethostname()], timeout=5)"
            ".active_queues() or {}; "
            "print(json.dumps(sorted(q['name'] for qs in r.values() for q in qs)))"
        )
        queues = subprocess.run(
            [sys.executable, "-c", probe],
            env=_env(config_path),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert json.loads(queues.stdout) == ["scan.alpha", "scanqueue.control"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'scanqueue_queue_depth{cluster="alpha"' in text, text[:2000]
        assert "PROMETHEUS_MULTIPROC_DIR is not set" not in (tmp_path / "worker.log").read_text()
    finally:
        _stop(proc)


def test_compose_beat_command_starts_with_its_schedule_on_tmp(
    tmp_path: Path, redis_url: str
) -> None:
    config_path = _settings(tmp_path, redis_url)
    command = _compose_command("beat")
    schedule = next(a for a in command if a.startswith("--schedule=")).partition("=")[2]
    command = [
        f"--schedule={tmp_path / 'beat-schedule'}" if a.startswith("--schedule=") else a
        for a in command
    ]
    assert schedule.startswith("/tmp/")
    log = tmp_path / "beat.log"
    proc = _start(command, config_path, log)
    try:
        deadline = time.monotonic() + 60
        while "beat: Starting" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        result = _health(config_path, *command)
        assert result.returncode == 0, result.stdout + result.stderr
        assert proc.poll() is None, log.read_text()
    finally:
        _stop(proc)


def test_compose_exporter_is_healthy_while_it_serves_and_unhealthy_after(
    tmp_path: Path, database_url: str
) -> None:
    """compose.yaml's exporter command against a real database; the image's check as Docker
    runs it, given that very command (--address=0.0.0.0 is probed on loopback)."""
    port = services.free_port()
    command = [f"--port={port}" if a.startswith("--port=") else a
               for a in _compose_command("exporter")]  # fmt: skip
    config_path = tmp_path / "scanqueue.toml"
    config_path.write_text(f'[database]\nurl = "{database_url}"\n')
    here = [("--address=127.0.0.1" if a.startswith("--address=") else a) for a in command]
    scanqueue = str(Path(sys.executable).parent / "scanqueue")
    exporter = processes.Process("exporter", [scanqueue, *here[1:]], tmp_path / "exporter.log",
                                 env=_env(config_path), cwd=tmp_path)  # fmt: skip
    exporter.start()
    try:
        exporter.wait_ready(lambda: processes.http_ok(f"http://127.0.0.1:{port}/healthz"),
                            what="/healthz", timeout=60)  # fmt: skip
        result = _health(config_path, *command)
        assert result.returncode == 0, result.stdout + result.stderr + exporter.tail()
        assert "/healthz answered 200" in result.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            assert re.search(r"^scanqueue_vulnmetrics_up 1(\.0)?$", response.read().decode(), re.M)
    finally:
        exporter.stop(20)
    result = _health(config_path, *command)
    assert result.returncode == 1
    assert "unreachable" in result.stdout
