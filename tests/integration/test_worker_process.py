"""A real worker process against the real Redis broker: the app's settings hold."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import redis

from scanqueue import config
from tests.support.worker_fixtures import WorkerProcess
from workers import app as worker_app


def _settings_file(tmp_path: Path, redis_url: str) -> Path:
    path = tmp_path / "scanqueue.toml"
    path.write_text(
        f'[broker]\nurl = "{redis_url}"\nresult_backend = "{redis_url}"\n'
        "visibility_timeout_seconds = 30\n"
        "[scan]\njob_deadline_seconds = 5\nsoft_time_limit_seconds = 10\n"
        "hard_time_limit_seconds = 20\n"
        '[[clusters]]\nname = "alpha"\nkubeconfig = "/nonexistent"\n'
    )
    return path


def test_worker_process_answers_on_the_control_queue(
    tmp_path: Path, redis_url: str, worker_factory: Callable[..., WorkerProcess]
) -> None:
    path = _settings_file(tmp_path, redis_url)
    worker_factory(path, queues=[worker_app.CONTROL_QUEUE, "scan.alpha"])
    client = worker_app.make_app(config.load(path, environ={}))
    result = client.send_task("scanqueue.ping", queue=worker_app.CONTROL_QUEUE)
    assert result.get(timeout=30) == "pong"


def test_app_settings_order_time_limits_and_declare_every_cluster_queue(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        '[[clusters]]\nname = "a"\nin_cluster = true\n[[clusters]]\nname = "b"\nin_cluster = true\n'
    )
    settings = config.load(path, environ={})
    conf = worker_app.make_app(settings).conf
    assert {q.name for q in conf.task_queues} == {"scan.a", "scan.b", worker_app.CONTROL_QUEUE}
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    # a worker killed during a sweep holds the sweep mutex only briefly, not kombu's 300 s
    options = conf.broker_transport_options
    assert 1 <= options["unacked_restore_interval"] <= options["unacked_mutex_expire"] <= 30
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is True
    assert (
        settings.scan.job_deadline_seconds
        < conf.task_soft_time_limit
        < conf.task_time_limit
        < conf.broker_transport_options["visibility_timeout"]
    )


def test_scan_task_is_never_dropped_by_celerys_default_retry_limit() -> None:
    """Celery's default max_retries (3) would ack and drop a scan after its 4th retry of any
    kind (a full in-flight cap, an API blip); the task bounds its own temporary failures."""
    from workers import tasks

    assert tasks.scan.max_retries is None
    assert tasks.MAX_TEMPORARY_RETRIES >= 3


def test_worker_logs_no_celery_line_per_task_at_info_but_does_at_debug(
    tmp_path: Path, redis_url: str
) -> None:
    # our tasks log what they did with the scan's fields; Celery's "received" and
    # "succeeded" lines per task would double a busy worker's log (and its CPU)
    path = _settings_file(tmp_path, redis_url)
    client = worker_app.make_app(config.load(path, environ={}))
    broker = redis.Redis.from_url(redis_url)
    lines = {}
    for level in ("INFO", "DEBUG"):
        log = tmp_path / f"worker-{level}.log"
        worker = WorkerProcess(path, [worker_app.CONTROL_QUEUE], log, log_level=level).start()
        try:
            result = client.send_task("scanqueue.ping", queue=worker_app.CONTROL_QUEUE)
            assert result.get(timeout=30) == "pong"
            # acknowledged once the pool process handed the task back, its lines written
            # (the result is stored before them; a stop then could cut them off)
            deadline = time.monotonic() + 30
            while broker.hlen("unacked") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert broker.hlen("unacked") == 0
        finally:
            worker.stop()
        lines[level] = log.read_text()
    for level, expected in (("INFO", False), ("DEBUG", True)):
        task_lines = [line for line in lines[level].splitlines() if "scanqueue.ping[" in line]
        assert any(line.endswith('] received"}') for line in task_lines) is expected, task_lines
        assert any("] succeeded in " in line for line in task_lines) is expected, task_lines
