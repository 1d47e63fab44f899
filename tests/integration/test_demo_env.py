"""demo_env: the embedded default's world, here on its own Redis and PostgreSQL.

The private registry refuses anonymous pulls and accepts the credential the
demo's pull secrets hold; the emulator's pods run exactly the digests pushed;
the settings file is valid; nothing the world prints or shows holds the
registry password; ``stop()`` leaves no process behind.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanqueue import config, demo_env, demo_services, store
from tests.support.run_fixtures import processes_mentioning


@pytest.fixture
def directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sq-demo-env-"))
    os.chmod(path, 0o755)  # the private PostgreSQL runs as another user when we are root
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_demo_world_on_private_services_serves_the_pushed_images_and_stops_cleanly(
    directory: Path,
) -> None:
    said: list[str] = []
    world = demo_env.start(
        directory, settings=config.Settings(), private_services=True, say=said.append
    )
    try:
        assert world.redis_url != config.Settings().broker.url
        assert demo_services.redis_answers(world.redis_url)
        with store.connect(world.database_url) as conn:
            assert store.migrate(conn)
            conn.commit()

        pods = world.emulator.list("Pod")
        running = {
            status["imageID"].rpartition("@")[2]
            for pod in pods
            for status in pod["status"]["containerStatuses"]
        }
        assert running == set(world.digests.values())
        assert len(running) == 5

        secret = world.emulator.get("Secret", "team-a", "regcred")
        auths = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))["auths"]
        entry = auths[world.registry.host]
        assert (entry["username"], entry["password"]) == (
            world.registry.user,
            world.registry.password,
        )
        host = world.registry.host
        assert _status(f"http://{host}/v2/") == 401
        assert _status(f"http://{host}/v2/", (entry["username"], entry["password"])) == 200
        assert _status(f"http://{world.public.host}/v2/") == 200

        settings = config.load(world.settings_path, environ={})
        assert [c.name for c in settings.clusters] == [demo_env.CLUSTER]
        assert settings.cluster("demo").kubeconfig == str(world.kubeconfig)
        assert set(settings.scan.insecure_registries) == {host, world.public.host}

        shown = "\n".join(said) + repr(world) + repr(world.registry)
        assert world.registry.password not in shown
        basic = base64.b64encode(f"{world.registry.user}:{world.registry.password}".encode())
        on_disk = [
            str(p)
            for p in directory.rglob("*")
            if p.is_file() and not p.is_symlink() and p.stat().st_size < 10_000_000
            for content in [_read(p)]
            if world.registry.password.encode() in content or basic in content
        ]
        assert on_disk == []
    finally:
        world.stop()
    assert processes_mentioning(str(directory)) == []


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the private PostgreSQL's files belong to another user
        return b""


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
