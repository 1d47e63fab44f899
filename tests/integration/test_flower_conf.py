"""Flower as deploy/ runs it: basic auth from a file, through the ConfigMap's flowerconfig.py.

The real ``celery flower`` with ``--conf`` set to the very ``flowerconfig.py``
of deploy/30-config.yaml, the auth file where the Secret volume would put it
(``SQ_FLOWER_BASIC_AUTH_FILE`` points there): the UI refuses anonymous and
wrong users and admits the right one, and neither Flower's environment nor
its command line holds the password. An empty auth file stops Flower instead
of leaving it open.
"""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from scanqueue import processes, roles
from tests.support import farm_fixtures

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Flower-Pw-6d2a91c4-file-only"


def _flowerconfig() -> str:
    for doc in yaml.safe_load_all((ROOT / "deploy" / "30-config.yaml").read_text()):
        if doc and doc["kind"] == "ConfigMap":
            return str(doc["data"]["flowerconfig.py"])
    raise AssertionError("no ConfigMap in deploy/30-config.yaml")


def _status(port: int, path: str, auth: str | None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0  # not listening (yet)


def _start(tmp_path: Path, redis_url: str, auth_text: str) -> tuple[processes.Process, int]:
    conf = tmp_path / "flowerconfig.py"
    conf.write_text(_flowerconfig())
    auth_file = tmp_path / "flower-basic-auth"
    auth_file.write_text(auth_text)
    settings = farm_fixtures.write_settings(
        tmp_path / "scanqueue.toml", database_url="postgresql://unused@127.0.0.1:1/x",
        redis_url=redis_url, clusters=[], insecure=[],
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "SCANQUEUE_"))} | {
        "SCANQUEUE_CONFIG": str(settings),
        "SQ_FLOWER_BASIC_AUTH_FILE": str(auth_file),
    }
    port = processes.free_port()
    argv = [*roles.flower(address="127.0.0.1", port=port), f"--conf={conf}"]
    return processes.Process("flower", argv, tmp_path / "flower.log", env=env).start(), port


def test_flower_admits_only_the_user_of_the_auth_file(tmp_path: Path, redis_url: str) -> None:
    process, port = _start(tmp_path, redis_url, f"ops:{PASSWORD}\n")
    try:
        process.wait_ready(lambda: _status(port, "/healthcheck", None) == 200,
                           what="/healthcheck", timeout=60)  # fmt: skip
        assert _status(port, "/workers", None) == 401
        assert _status(port, "/workers", "ops:wrong") == 401
        assert _status(port, "/workers", f"ops:{PASSWORD}") == 200
        assert _status(port, "/api/workers", f"ops:{PASSWORD}") == 200
        assert process.proc is not None
        for name in ("environ", "cmdline"):
            text = (Path("/proc") / str(process.proc.pid) / name).read_bytes()
            assert PASSWORD.encode() not in text, name
    finally:
        process.stop(20)


def test_flower_does_not_start_open_when_the_auth_file_is_empty(
    tmp_path: Path, redis_url: str
) -> None:
    process, port = _start(tmp_path, redis_url, "\n")
    try:
        with pytest.raises(processes.ExitedError):
            process.wait_ready(lambda: _status(port, "/healthcheck", None) == 200,
                               what="/healthcheck", timeout=60)  # fmt: skip
        assert "holds no user:password" in (tmp_path / "flower.log").read_text()
    finally:
        process.stop(20)
