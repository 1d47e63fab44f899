"""A real worker given a scan payload of a newer release puts it back instead of dropping it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from scanqueue import config, discovery
from tests.support.worker_fixtures import WorkerProcess
from workers import app as worker_app


def _settings_file(tmp_path: Path, redis_url: str) -> Path:
    path = tmp_path / "scanqueue.toml"
    path.write_text(
        f'[broker]\nurl = "{redis_url}"\nresult_backend = "{redis_url}"\n'
        '[[clusters]]\nname = "alpha"\nkubeconfig = "/nonexistent"\n'
    )
    return path


def _payload(version: int) -> dict[str, object]:
    request = discovery.ScanRequest(
        scan_id="f" * 32, cluster="alpha", namespace="team-a", pod="web-1", container="app",
        container_type="app", image="reg.example/team/web:1", digest="sha256:" + "a" * 64,
        workload_kind="Deployment", workload_name="web", node="n1", pull_secrets=("regcred",),
        service_account="default",
    )  # fmt: skip
    return {**discovery.to_payload(request), "v": version}


def test_a_payload_of_a_newer_release_is_requeued_with_a_log_line(
    tmp_path: Path, redis_url: str, worker_factory: Callable[..., WorkerProcess]
) -> None:
    path = _settings_file(tmp_path, redis_url)
    worker = worker_factory(path, queues=["scan.alpha"])
    client = worker_app.make_app(config.load(path, environ={}))
    result = client.send_task(
        "scanqueue.scan", kwargs={"request": _payload(discovery.PAYLOAD_VERSION + 1)},
        queue="scan.alpha",
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while result.state != "RETRY" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert result.state == "RETRY", worker.tail()
    log = worker.tail(200)
    assert "scan request requeued" in log and "upgrade the workers" in log
    assert "dropped" not in log
