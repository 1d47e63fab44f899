"""Session-wide real services: Redis, PostgreSQL, a private registry.

Each is started by the tests on loopback and a free port and stopped at the
end. A service that cannot start fails the tests that need it; nothing skips.
Tests that need a clean slate take the function-scoped fixtures
(``redis_url`` flushes, ``database_url`` is a fresh migrated database).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import services

# Each area adds its fixtures module here (one line each), not to this file.
pytest_plugins: list[str] = [
    "tests.support.worker_fixtures",
    "tests.support.registry_fixtures",
    "tests.support.results_fixtures",
    "tests.support.sim_fixtures",
    "tests.support.watcher_fixtures",
    "tests.support.farm_fixtures",
    "tests.support.reliability_fixtures",
    "tests.support.run_fixtures",
    "tests.support.trivy_fixtures",
]

REGISTRY_USER = "alice"
REGISTRY_PASSWORD = "alice-registry-pw-1"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[services.RedisServer]:
    with services.tempdir("sq-redis-") as tmp:
        server = services.RedisServer(tmp).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_url(redis_server: services.RedisServer) -> str:
    """A Redis URL with an empty database (flushed before the test)."""
    import redis

    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[services.PostgresServer]:
    with services.tempdir("sq-pg-") as tmp:
        server = services.PostgresServer(tmp).start()
        try:
            yield server
        finally:
            server.stop("immediate")


@pytest.fixture(scope="session")
def migrated_template(postgres_server: services.PostgresServer) -> str:
    """A database with every migration applied, used as the template of per-test databases."""
    from scanqueue import store

    name = "scanqueue_template"
    postgres_server.drop_database(name)
    url = postgres_server.create_database(name)
    with store.connect(url) as conn:
        store.migrate(conn)
        conn.commit()
    return name


@pytest.fixture
def database_url(postgres_server: services.PostgresServer, migrated_template: str) -> Iterator[str]:
    """A fresh database with every migration applied, dropped after the test."""
    name = services.unique_name("sq_test")
    url = postgres_server.create_database(name, template=migrated_template)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture
def empty_database_url(postgres_server: services.PostgresServer) -> Iterator[str]:
    """A fresh database with nothing in it, dropped after the test."""
    name = services.unique_name("sq_empty")
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def registry() -> Iterator[services.Registry]:
    """A private registry with htpasswd auth; user ``REGISTRY_USER``."""
    with services.tempdir("sq-registry-") as tmp:
        server = services.Registry(tmp, users={REGISTRY_USER: REGISTRY_PASSWORD}).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def registry_factory() -> Iterator[Callable[..., services.Registry]]:
    """Start extra registries (``users=...`` or ``token=...``); all stopped after the test."""
    started: list[services.Registry] = []
    dirs: list[Path] = []

    def start(**kwargs: object) -> services.Registry:
        directory = Path(services.tempfile.mkdtemp(prefix="sq-registry-"))
        dirs.append(directory)
        server = services.Registry(directory, **kwargs).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    for directory in dirs:
        services.shutil.rmtree(directory, ignore_errors=True)
