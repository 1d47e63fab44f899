"""Task events reach Flower in batches (workers.app.Consumer).

A real worker and a real ``celery flower``: every task's events arrive and Flower
shows each task succeeded, while the worker sent them in far fewer broker
messages than events (one ``task.multi`` message per tenth of a second instead of
one PUBLISH per event). What the worker had buffered when it is stopped (SIGTERM,
a warm shutdown) still reaches Flower.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from scanqueue import processes, roles
from tests.support import farm_fixtures, worker_fixtures

TASKS = 60


def _flower_tasks(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tasks", timeout=10) as r:
            tasks: dict[str, Any] = json.load(r)
            return tasks
    except OSError:
        return {}


class _EventMessages:
    """Counts the broker messages carrying task events (PSUBSCRIBE on the event channels)."""

    def __init__(self, redis_url: str) -> None:
        self._pubsub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe("*celeryev*")
        self.messages = 0
        self.events = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message is None or b"task" not in message["channel"]:
                continue
            self.messages += 1
            envelope = json.loads(message["data"])
            raw = envelope["body"]
            if envelope.get("properties", {}).get("body_encoding") == "base64":
                raw = base64.b64decode(raw)
            body = json.loads(raw)
            self.events += len(body) if isinstance(body, list) else 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()


def test_flower_shows_every_task_from_batched_events(
    tmp_path: Path,
    redis_url: str,
    worker_factory: Callable[..., worker_fixtures.WorkerProcess],
) -> None:
    settings = farm_fixtures.write_settings(
        tmp_path / "scanqueue.toml", database_url="postgresql://unused@127.0.0.1:1/x",
        redis_url=redis_url, clusters=[], insecure=[],
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "SCANQUEUE_"))}
    port = processes.free_port()
    flower = processes.Process(
        "flower", roles.flower(port=port), tmp_path / "flower.log",
        env=env | {"SCANQUEUE_CONFIG": str(settings), "FLOWER_UNAUTHENTICATED_API": "true"},
    ).start()  # fmt: skip
    counted = _EventMessages(redis_url)
    # at DEBUG the worker logs Celery's line for each task it ran (read below)
    worker = worker_factory(settings, queues=["scanqueue.control"], log_level="DEBUG")
    try:
        # Flower listens to events once it knows the worker
        flower.wait_ready(lambda: worker.name in _get(port, "/api/workers?refresh=1"),
                          what="Flower seeing the worker", timeout=60)  # fmt: skip
        sender = Celery(broker=redis_url)
        ids = [sender.send_task("scanqueue.ping", queue="scanqueue.control").id
               for _ in range(TASKS)]  # fmt: skip
        sender.close()

        def all_succeeded() -> bool:
            tasks = _flower_tasks(port)
            return all(tasks.get(i, {}).get("state") == "SUCCESS" for i in ids)

        flower.wait_ready(all_succeeded, what=f"Flower showing {TASKS} tasks succeeded",
                          timeout=60)  # fmt: skip
        # received, started, succeeded for each task: far fewer messages than events
        assert counted.events >= 3 * TASKS
        assert counted.messages <= counted.events / 3, (counted.messages, counted.events)

        # a warm shutdown in the middle of a stream of tasks: every task the worker ran
        # shows in Flower, the last ones' events sent at shutdown, not dropped with the buffer
        more = Celery(broker=redis_url)
        for _ in range(400):
            more.send_task("scanqueue.ping", queue="scanqueue.control")
        more.close()
        flower.wait_ready(lambda: len(_flower_tasks(port)) >= TASKS + 20,
                          what="the stream of tasks running", timeout=30)  # fmt: skip
        worker.stop()
        ran = set(re.findall(r"scanqueue\.ping\[([0-9a-f-]{36})\] succeeded",
                             worker.log.read_text()))  # fmt: skip
        assert len(ran) > TASKS, len(ran)

        def shown() -> bool:
            tasks = _flower_tasks(port)
            return all(tasks.get(i, {}).get("state") == "SUCCESS" for i in ran)

        flower.wait_ready(shown, what="every task the worker ran, after it stopped", timeout=30)
    finally:
        counted.stop()
        flower.stop()


def _get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return str(r.read().decode())
    except OSError:
        return ""
