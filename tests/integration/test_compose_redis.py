"""compose.yaml's Redis command, run for real with the local redis-server.

No Docker here, so the one piece that is the image's (``docker-entrypoint.sh``,
which drops from root to the redis user when its first argument is
``redis-server``) is a stand-in that records its arguments and runs them; the
shell script around it is compose's, only its paths moved into a temporary
folder. It must start a Redis that requires the password of the secret file,
persists (appendonly) and never evicts, without the password in any process's
command line, and hand the server to the entrypoint in the form that drops root.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from scanqueue import processes
from tests.support import services

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "redis-canary-pw-4d2e"


def _compose_script() -> str:
    service = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))["services"]
    command = service["redis"]["command"]
    assert command[:2] == ["sh", "-c"]
    return str(command[2]).replace("$$", "$")  # compose's escape of a literal $


@pytest.fixture
def compose_redis(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """(port, the config file it wrote, the entrypoint's recorded arguments)."""
    secret = tmp_path / "redis_password"
    secret.write_text(PASSWORD + "\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorded = tmp_path / "entrypoint-args"
    entrypoint = bin_dir / "docker-entrypoint.sh"
    entrypoint.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {recorded}\nexec "$@"\n')
    entrypoint.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    conf = tmp_path / "redis.conf"
    port = services.free_port()
    script = (
        _compose_script()
        .replace("/run/secrets/redis_password", str(secret))
        .replace("/tmp/redis.conf", str(conf))
        .replace("chown redis:redis", f"chown {os.getuid()}:{os.getgid()}")
    ) + f" --port {port} --bind 127.0.0.1 --dir {data} --save ''"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    server = processes.Process("redis", ["sh", "-c", script], tmp_path / "redis.log", env=env)
    server.start()
    try:
        server.wait_port(port, timeout=30)
        yield port, conf, recorded
    finally:
        server.stop(10)


def test_compose_redis_requires_the_secret_file_password_and_persists(
    compose_redis: tuple[int, Path, Path],
) -> None:
    port, conf, recorded = compose_redis
    anonymous = redis.Redis(port=port)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    client = redis.Redis(port=port, password=PASSWORD)
    try:
        assert client.ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
        anonymous.close()
    assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600, "the password file of redis only"
    # the image's entrypoint drops root only when redis-server comes first
    assert recorded.read_text().splitlines()[:2] == ["redis-server", str(conf)]
