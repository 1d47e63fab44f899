"""The test world itself: the registry fixture really enforces auth and serves what was pushed."""

from __future__ import annotations

from collections.abc import Callable

import redis

from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import services


def test_registry_refuses_without_credentials_and_serves_with_them(
    registry: services.Registry,
) -> None:
    digest = registry.push("team/app", "1", content="fixture-check")
    assert digest.startswith("sha256:")
    assert registry.status("/v2/") == 401
    assert registry.status("/v2/team/app/manifests/1") == 401
    assert registry.status("/v2/team/app/manifests/1", REGISTRY_USER, "wrong") == 401
    assert registry.status("/v2/team/app/manifests/1", REGISTRY_USER, REGISTRY_PASSWORD) == 200
    assert (
        registry.status(f"/v2/team/app/manifests/{digest}", REGISTRY_USER, REGISTRY_PASSWORD) == 200
    )


def test_pushed_digest_is_what_skopeo_inspect_reports(registry: services.Registry) -> None:
    digest = registry.push("team/inspect", "v2", content="inspect-me")
    reported = services.skopeo_digest(
        f"docker://{registry.host}/team/inspect:v2", creds=f"{REGISTRY_USER}:{REGISTRY_PASSWORD}"
    )
    assert reported == digest


def test_different_content_gives_different_digests(registry: services.Registry) -> None:
    assert registry.push("team/a", "1", content="one") != registry.push(
        "team/a", "2", content="two"
    )


def test_registry_access_log_names_the_authenticated_user(registry: services.Registry) -> None:
    registry.status("/v2/", REGISTRY_USER, REGISTRY_PASSWORD)
    assert f'auth.user.name="{REGISTRY_USER}"' in registry.access_log() or (
        f"auth.user.name={REGISTRY_USER}" in registry.access_log()
    )


def test_redis_fixture_is_private_and_empty(
    redis_url: str, redis_server: services.RedisServer
) -> None:
    assert redis_server.port != 6379
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
        client.set("k", "v")
        assert client.get("k") == b"v"
    finally:
        client.close()


def test_anonymous_registry_serves_without_credentials(
    registry_factory: Callable[..., services.Registry],
) -> None:
    public = registry_factory(anonymous=True)
    digest = public.push("library/tool", "1", content="public")
    assert public.status("/v2/library/tool/manifests/1") == 200
    assert public.status(f"/v2/library/tool/manifests/{digest}") == 200
