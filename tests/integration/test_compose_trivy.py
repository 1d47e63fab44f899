"""compose.yaml's Trivy server (profile ``rescans``), its command run by the real Trivy.

No Docker here: the image's ``trivy`` is the same version as the ``sim`` extra's (checked
by test_compose), so compose's own arguments run with that binary, its listen address and
cache directory moved to a free loopback port and a cache seeded with the test DB, and
``--skip-db-update`` added (no internet here; the real one downloads the DB). What the
farm asks of it must then work: compose's health check URL, and the DB version a rescan
plan reads from ``rescan.trivy_server`` (``scanqueue.trivy.db_version``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from scanqueue import processes, trivy
from scanqueue.sim import scanner
from tests.support import services
from tests.support import trivy_fixtures as tf

ROOT = Path(__file__).resolve().parents[2]


def _service() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    return dict(compose["services"]["trivy"])


@pytest.fixture
def compose_trivy(tmp_path: Path) -> Iterator[str]:
    """The server's URL on loopback."""
    service = _service()
    port = services.free_port()
    moved = {
        "--listen=": f"--listen=127.0.0.1:{port}",
        "--cache-dir=": f"--cache-dir={tf.seeded_cache(tmp_path)}",
    }
    command = [next((v for k, v in moved.items() if a.startswith(k)), a)
               for a in service["command"]]  # fmt: skip
    assert command != service["command"], "listen address and cache dir were moved"
    env = {**scanner.base_env(tmp_path), **service.get("environment", {}), "HOME": str(tmp_path)}
    argv = [scanner.binary(), *command, "--skip-db-update"]
    server = processes.Process("trivy", argv, tmp_path / "trivy.log", env=env).start()
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_ready(lambda: processes.http_ok(f"{url}/healthz"), what="/healthz", timeout=60)
        yield url
    finally:
        server.stop(10)


def test_compose_trivy_server_answers_its_health_check_and_the_rescan_plan(
    compose_trivy: str,
) -> None:
    probe = _service()["healthcheck"]["test"][-1].replace("http://127.0.0.1:4954", compose_trivy)
    assert probe.startswith(compose_trivy)
    assert processes.http_ok(probe)
    version = trivy.db_version(trivy.Runner(binary=scanner.binary(), server=compose_trivy))
    assert version.source == compose_trivy
    assert version.trivy_version is not None and version.trivy_version.startswith("0.76.")
