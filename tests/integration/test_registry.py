"""The registry client against real registries: htpasswd, token auth, a capturing proxy.

Registries are Debian's ``docker-registry``; the token issuer, the proxy and
the scripted servers are real HTTP/TCP servers on loopback (see
``tests/support/registry_fixtures.py``). Nothing of scanqueue is mocked.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from scanqueue import config, credentials, images, registry
from tests.support import services
from tests.support.registry_fixtures import (
    TOKEN_SERVICE,
    CapturingProxy,
    ScriptedServer,
    Seen,
    TokenIssuer,
    TokenWorld,
    canary,
    self_signed,
)

RegistryFactory = Callable[..., services.Registry]


def settings(**overrides: object) -> config.ScanSettings:
    values: dict[str, object] = {"allow_anonymous": False, "registry_timeout_seconds": 5.0}
    values.update(overrides)
    return config.ScanSettings(**values)  # type: ignore[arg-type]


def credential(
    host: str, user: str, password: str, source: str, **extra: str
) -> credentials.Credential:
    return credentials.Credential(
        registry=host, username=user, password=password, source=source, key=host, **extra
    )


def secrets_of(user: str, password: str) -> list[bytes]:
    pair = f"{user}:{password}".encode()
    return [password.encode(), base64.b64encode(pair), base64.b64encode(pair).rstrip(b"=")]


class Sleeps:
    """A ``sleep`` for the client that records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


# ------------------------------------------------------------- basic auth


def test_right_credential_second_in_the_list_is_used_and_the_first_is_refused(
    registry_factory: RegistryFactory,
) -> None:
    server = registry_factory(users={"ana": "ana-pw-1"})
    digest = server.push("team/app", "1", content="second-wins")
    stale = credential(server.host, "ana", "ana-pw-old", "team-a/stale")
    current = credential(server.host, "ana", "ana-pw-1", "team-a/current")

    with registry.Client(settings=settings()) as client:
        resolution = client.resolve(images.parse(f"{server.host}/team/app:1"), [stale, current])

    assert resolution.digest == digest
    assert resolution.credential == current
    assert [(r.source, r.kind, r.status) for r in resolution.refusals] == [
        ("team-a/stale", "unauthorized", 401)
    ]
    assert str(resolution.pinned) == f"{server.host}/team/app:1@{digest}"


def test_tag_resolves_to_the_digest_skopeo_inspect_reports(
    registry_factory: RegistryFactory,
) -> None:
    server = registry_factory(users={"ana": "ana-pw-1"})
    server.push("team/inspect", "v2", content="inspect-me")
    expected = services.skopeo_digest(
        f"docker://{server.host}/team/inspect:v2", creds="ana:ana-pw-1"
    )

    with registry.Client(settings=settings()) as client:
        resolution = client.resolve(
            images.parse(f"{server.host}/team/inspect:v2"),
            [credential(server.host, "ana", "ana-pw-1", "f")],
        )

    assert resolution.digest == expected


def test_reference_pinned_by_digest_is_confirmed_and_kept(
    registry_factory: RegistryFactory,
) -> None:
    server = registry_factory(users={"ana": "ana-pw-1"})
    digest = server.push("team/app", "1", content="pinned")
    server.push("team/app", "1", content="tag moved on")

    with registry.Client(settings=settings()) as client:
        resolution = client.resolve(
            images.parse(f"{server.host}/team/app@{digest}"),
            [credential(server.host, "ana", "ana-pw-1", "f")],
        )

    assert resolution.digest == digest


def test_unknown_repository_is_a_not_found_answer_per_candidate(
    registry_factory: RegistryFactory,
) -> None:
    server = registry_factory(users={"ana": "ana-pw-1"})

    with (
        registry.Client(settings=settings()) as client,
        pytest.raises(registry.NoCredentialAccepted) as caught,
    ):
        client.resolve(
            images.parse(f"{server.host}/team/missing:1"),
            [credential(server.host, "ana", "ana-pw-1", "team-a/regcred")],
        )

    assert [(r.source, r.kind, r.status) for r in caught.value.refusals] == [
        ("team-a/regcred", "not-found", 404)
    ]
    assert "team/missing:1 does not exist" in str(caught.value)
    assert "team-a/regcred" in str(caught.value)


def test_anonymous_is_tried_last_only_when_configured(
    registry_factory: RegistryFactory,
) -> None:
    server = registry_factory(users={"ana": "ana-pw-1"})
    server.push("team/app", "1")
    image = images.parse(f"{server.host}/team/app:1")
    wrong = credential(server.host, "ana", "nope", "team-a/regcred")

    with (
        registry.Client(settings=settings(allow_anonymous=False)) as client,
        pytest.raises(registry.NoCredentialAccepted) as without,
    ):
        client.resolve(image, [wrong])
    with (
        registry.Client(settings=settings(allow_anonymous=True)) as client,
        pytest.raises(registry.NoCredentialAccepted) as with_anonymous,
    ):
        client.resolve(image, [wrong])

    assert [r.source for r in without.value.refusals] == ["team-a/regcred"]
    assert [(r.source, r.kind) for r in with_anonymous.value.refusals] == [
        ("team-a/regcred", "unauthorized"),
        ("anonymous", "unauthorized"),
    ]


def test_no_candidate_and_no_anonymous_says_so_without_asking_the_registry(
    registry_factory: RegistryFactory,
) -> None:
    server = registry_factory(users={"ana": "ana-pw-1"})
    before = server.access_log()

    with (
        registry.Client(settings=settings(allow_anonymous=False)) as client,
        pytest.raises(registry.NoCredentialAccepted) as caught,
    ):
        client.resolve(images.parse(f"{server.host}/team/app:1"), [])

    assert caught.value.refusals == ()
    assert "anonymous pulls are not allowed" in str(caught.value)
    assert server.access_log() == before


# --------------------------------------------- one registry's credential, never another's


def test_registry_a_credential_is_never_presented_to_registry_b(
    registry_factory: RegistryFactory,
    capturing_proxy: Callable[[int], CapturingProxy],
) -> None:
    a_password, b_password = canary("registry-a"), canary("registry-b")
    registry_a = registry_factory(users={"ana": a_password})
    registry_b = registry_factory(users={"bob": b_password})
    registry_b.push("team/app", "1", content="on b")
    proxy = capturing_proxy(registry_b.port)
    a_credential = credential(registry_a.host, "ana", a_password, "team-a/registry-a")
    # a pull secret keyed for registry B but holding registry A's user: it belongs to B
    misfiled = credential(proxy.host, "ana", a_password, "team-a/misfiled")
    b_credential = credential(proxy.host, "bob", b_password, "team-a/registry-b")

    with registry.Client(settings=settings()) as client:
        resolution = client.resolve(
            images.parse(f"{proxy.host}/team/app:1"), [a_credential, misfiled, b_credential]
        )

    assert resolution.credential == b_credential
    assert [(r.source, r.kind) for r in resolution.refusals] == [
        ("team-a/registry-a", "not-sent"),
        ("team-a/misfiled", "unauthorized"),
    ]
    sent_to_b = proxy.sent()
    assert b"Basic " + base64.b64encode(f"bob:{b_password}".encode()) in sent_to_b
    # registry A's credential (user ana with A's password) only reached B when a pull
    # secret explicitly keyed it for B; the one keyed for A never did
    assert sent_to_b.count(base64.b64encode(f"ana:{a_password}".encode())) == 1
    log_b = registry_b.access_log()
    assert 'auth.user.name="bob"' in log_b or "auth.user.name=bob" in log_b
    assert "auth.user.name=ana" not in log_b and 'auth.user.name="ana"' not in log_b
    assert a_password not in log_b


def test_credential_for_another_port_of_the_same_host_is_not_sent(
    registry_factory: RegistryFactory,
    capturing_proxy: Callable[[int], CapturingProxy],
) -> None:
    a_password = canary("port-a")
    registry_a = registry_factory(users={"ana": a_password})
    registry_b = registry_factory(users={"bob": "bob-pw-1"})
    registry_b.push("team/app", "1")
    proxy = capturing_proxy(registry_b.port)

    with (
        registry.Client(settings=settings()) as client,
        pytest.raises(registry.NoCredentialAccepted) as caught,
    ):
        client.resolve(
            images.parse(f"{proxy.host}/team/app:1"),
            [credential(registry_a.host, "ana", a_password, "team-a/registry-a")],
        )

    assert caught.value.refusals[0].kind == "not-sent"
    assert f"belongs to {registry_a.host}, not {proxy.host}" in str(caught.value)
    assert not any(secret in proxy.sent() for secret in secrets_of("ana", a_password))


def test_redirect_to_another_origin_goes_without_the_authorization_header(
    registry_factory: RegistryFactory,
    capturing_proxy: Callable[[int], CapturingProxy],
    scripted_server: Callable[..., ScriptedServer],
) -> None:
    a_password = canary("redirecting")
    registry_b = registry_factory(users={"bob": "bob-pw-1"})
    registry_b.push("team/app", "1")
    proxy = capturing_proxy(registry_b.port)

    def registry_a(request: Seen) -> tuple[int, dict[str, str], bytes]:
        if "Authorization" not in request.headers:
            return 401, {"WWW-Authenticate": 'Basic realm="a"'}, b""
        # "blob storage" elsewhere: the manifest lives at another origin
        return 307, {"Location": f"http://{proxy.host}{request.path}"}, b""

    front = scripted_server(registry_a)

    with (
        registry.Client(settings=settings()) as client,
        pytest.raises(registry.NoCredentialAccepted) as caught,
    ):
        client.resolve(
            images.parse(f"{front.host}/team/app:1"),
            [credential(front.host, "ana", a_password, "team-a/registry-a")],
        )

    assert any("Authorization" in r.headers for r in front.seen), "A got its own credential"
    # B's 401 is B's challenge, not A's: refused, never answered with A's credential
    assert caught.value.refusals[0].kind == "bad-challenge"
    assert "challenge from another origin" in caught.value.refusals[0].detail
    sent_to_b = proxy.sent()
    assert b"/v2/team/app/manifests/1" in sent_to_b
    assert b"authorization" not in sent_to_b.lower()
    assert not any(secret in sent_to_b for secret in secrets_of("ana", a_password))


# ------------------------------------------------------------------ bearer


def test_bearer_flow_uses_the_first_candidate_the_token_issuer_grants_pull(
    token_world: TokenWorld,
) -> None:
    digest = token_world.push("team/app", "1", content="bearer")
    issuer, host = token_world.issuer, token_world.registry.host
    issuer.users.update({"carol": "carol-pw-1", "dave": "dave-pw-1"})
    issuer.grants["carol"] = {"team/other": {"pull"}}
    issuer.grants["dave"] = {"team/app": {"pull"}}
    carol = credential(host, "carol", "carol-pw-1", "team-a/carol")
    dave = credential(host, "dave", "dave-pw-1", "team-a/dave")
    expected = services.skopeo_digest(f"docker://{host}/team/app:1", creds="pusher:pusher-pw-1")

    with registry.Client(settings=settings()) as client:
        resolution = client.resolve(images.parse(f"{host}/team/app:1"), [carol, dave])

    assert resolution.digest == digest == expected
    assert resolution.credential == dave
    assert [(r.source, r.kind) for r in resolution.refusals] == [("team-a/carol", "unauthorized")]
    assert "no pull access to team/app" in resolution.refusals[0].detail
    asked = [(r["user"], r["scope"]) for r in issuer.requests if r["user"] in ("carol", "dave")]
    assert asked == [
        ("carol", ["repository:team/app:pull"]),
        ("dave", ["repository:team/app:pull"]),
    ]


def test_wrong_password_at_the_token_realm_is_refused_without_the_secret(
    token_world: TokenWorld, caplog: pytest.LogCaptureFixture
) -> None:
    token_world.push("team/app", "1")
    secret = canary("token-realm")
    host = token_world.registry.host
    token_world.issuer.users["erin"] = "erin-real-pw"
    caplog.set_level(logging.DEBUG)

    with (
        registry.Client(settings=settings()) as client,
        pytest.raises(registry.NoCredentialAccepted) as caught,
    ):
        client.resolve(
            images.parse(f"{host}/team/app:1"), [credential(host, "erin", secret, "team-a/erin")]
        )

    refusal = caught.value.refusals[0]
    assert (refusal.kind, refusal.status) == ("unauthorized", 401)
    assert f"token realm {token_world.issuer.realm_host}:" in refusal.detail
    for text in (str(caught.value), repr(caught.value), repr(refusal), caplog.text):
        assert secret not in text


def test_identity_token_is_used_as_a_refresh_token_at_the_realm(token_world: TokenWorld) -> None:
    digest = token_world.push("team/app", "1")
    issuer, host = token_world.issuer, token_world.registry.host
    identity_token = canary("identity-token")
    issuer.refresh_tokens[identity_token] = "frank"
    issuer.grants["frank"] = {"team/app": {"pull"}}
    frank = credentials.Credential(
        registry=host, username="<token>", token=identity_token, source="team-a/frank",
        token_kind="identitytoken",
    )  # fmt: skip

    with registry.Client(settings=settings()) as client:
        resolution = client.resolve(images.parse(f"{host}/team/app:1"), [frank])

    assert (resolution.digest, resolution.credential) == (digest, frank)
    assert [(r["method"], r["user"], r["grant_type"]) for r in issuer.requests][-1] == (
        "POST",
        "frank",
        "refresh_token",
    )


def test_registry_token_is_sent_as_the_bearer_token_itself(token_world: TokenWorld) -> None:
    digest = token_world.push("team/app", "1")
    issuer, host = token_world.issuer, token_world.registry.host
    issuer.users["jo"] = "jo-pw-1"
    issuer.grants["jo"] = {"team/app": {"pull"}}
    request = urllib.request.Request(
        f"{issuer.realm}?service={TOKEN_SERVICE}&scope=repository:team/app:pull",
        headers={"Authorization": "Basic " + base64.b64encode(b"jo:jo-pw-1").decode()},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        registry_token = json.load(response)["token"]
    asked_before = len(issuer.requests)
    jo = credentials.Credential(
        registry=host, username="", token=registry_token, source="team-a/jo",
        token_kind="registrytoken",
    )  # fmt: skip

    with registry.Client(settings=settings()) as client:
        resolution = client.resolve(images.parse(f"{host}/team/app:1"), [jo])

    assert (resolution.digest, resolution.credential) == (digest, jo)
    assert len(issuer.requests) == asked_before  # used as is, not exchanged at the realm


def test_anonymous_bearer_token_pulls_a_public_repository(token_world: TokenWorld) -> None:
    digest = token_world.push("public/app", "1")
    token_world.issuer.grants[""] = {"public/app": {"pull"}}
    host = token_world.registry.host

    with registry.Client(settings=settings(allow_anonymous=True)) as client:
        resolution = client.resolve(images.parse(f"{host}/public/app:1"), [])
        with pytest.raises(registry.NoCredentialAccepted) as private:
            client.resolve(images.parse(f"{host}/team/app:1"), [])

    assert (resolution.digest, resolution.credential) == (digest, None)
    assert [(r.source, r.kind) for r in private.value.refusals] == [("anonymous", "unauthorized")]


def test_tokens_are_cached_per_registry_scope_and_credential(token_world: TokenWorld) -> None:
    token_world.push("team/app", "1")
    token_world.push("team/other", "1")
    issuer, host = token_world.issuer, token_world.registry.host
    issuer.users.update({"gina": "gina-pw-1", "hank": "hank-pw-1"})
    issuer.grants["gina"] = issuer.grants["hank"] = {"*": {"pull"}}
    gina = credential(host, "gina", "gina-pw-1", "team-a/gina")
    hank = credential(host, "hank", "hank-pw-1", "team-a/hank")

    with registry.Client(settings=settings()) as client:
        for _ in range(3):
            client.resolve(images.parse(f"{host}/team/app:1"), [gina])
        client.resolve(images.parse(f"{host}/team/other:1"), [gina])
        client.resolve(images.parse(f"{host}/team/app:1"), [hank])
        cached = sorted(client.cached_tokens())

    asked = [(r["user"], r["scope"][0]) for r in issuer.requests if r["user"] in ("gina", "hank")]
    assert asked == [
        ("gina", "repository:team/app:pull"),
        ("gina", "repository:team/other:pull"),
        ("hank", "repository:team/app:pull"),
    ]
    assert [(scope, source) for _, scope, source in cached] == [
        ("repository:team/app:pull", "team-a/gina"),
        ("repository:team/app:pull", "team-a/hank"),
        ("repository:team/other:pull", "team-a/gina"),
    ]


def test_expired_token_is_fetched_again(token_world: TokenWorld) -> None:
    token_world.push("team/app", "1")
    issuer, host = token_world.issuer, token_world.registry.host
    issuer.users["ivy"] = "ivy-pw-1"
    issuer.grants["ivy"] = {"*": {"pull"}}
    now = [1000.0]
    ivy = credential(host, "ivy", "ivy-pw-1", "team-a/ivy")
    image = images.parse(f"{host}/team/app:1")

    with registry.Client(settings=settings(), clock=lambda: now[0]) as client:
        client.resolve(image, [ivy])
        now[0] += issuer.expires_in - 5  # inside the renewal margin
        client.resolve(image, [ivy])

    assert [r["user"] for r in issuer.requests].count("ivy") == 2


def test_cached_token_the_registry_no_longer_takes_is_fetched_again_once(
    token_world: TokenWorld,
) -> None:
    digest = token_world.push("team/app", "1")
    issuer, server = token_world.issuer, token_world.registry
    issuer.users["lee"] = "lee-pw-1"
    issuer.grants["lee"] = {"*": {"pull"}}
    lee = credential(server.host, "lee", "lee-pw-1", "team-a/lee")
    image = images.parse(f"{server.host}/team/app:1")

    with registry.Client(settings=settings()) as client:
        client.resolve(image, [lee])
        # the registry now trusts only a new signing key: the cached token is refused
        issuer.rotate_key()
        server.stop()
        server.start()
        resolution = client.resolve(image, [lee])

    assert (resolution.digest, resolution.credential) == (digest, lee)
    assert [r["user"] for r in issuer.requests].count("lee") == 2


def test_plain_http_token_realm_off_loopback_gets_no_credential(
    scripted_server: Callable[..., ScriptedServer],
) -> None:
    realm = "http://registry-auth.invalid/token"
    server = scripted_server(
        lambda request: (401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="s"'}, b"")
    )

    with (
        registry.Client(settings=settings()) as client,
        pytest.raises(registry.NoCredentialAccepted) as caught,
    ):
        client.resolve(
            images.parse(f"{server.host}/team/app:1"),
            [credential(server.host, "ana", "ana-pw-1", "team-a/regcred")],
        )

    assert caught.value.refusals[0].kind == "not-sent"
    assert "plain http" in caught.value.refusals[0].detail


# ------------------------------------------------------- errors, retries, TLS


def test_unreachable_registry_is_a_temporary_error_after_bounded_retries() -> None:
    host = f"127.0.0.1:{services.free_port()}"
    sleeps = Sleeps()
    candidates = [
        credential(host, "ana", "ana-pw-1", "team-a/regcred"),
        credential(host, "bob", "bob-pw-1", "team-a/other"),
    ]

    with (
        registry.Client(
            settings=settings(allow_anonymous=True), sleep=sleeps, max_attempts=3
        ) as client,
        pytest.raises(registry.RegistryUnavailable) as caught,
    ):
        client.resolve(images.parse(f"{host}/team/app:1"), candidates)

    assert isinstance(caught.value, registry.errors.TemporaryError)
    assert [(r.source, r.kind) for r in caught.value.refusals] == [
        ("team-a/regcred", "unreachable"),
        ("team-a/other", "unreachable"),
        ("anonymous", "unreachable"),
    ]
    assert f"cannot connect to {host}: connection refused" in str(caught.value)
    # three attempts (two waits) for the first candidate; the others reuse that answer
    assert sleeps.waits == [0.5, 1.0]


def test_server_errors_are_retried_with_backoff_until_the_registry_answers(
    scripted_server: Callable[..., ScriptedServer],
) -> None:
    digest = "sha256:" + "d" * 64
    failures = [503, 502]

    def script(request: Seen) -> tuple[int, dict[str, str], bytes]:
        if failures:
            return failures.pop(0), {}, b""
        if request.path == "/v2/":
            return 200, {}, b"{}"
        return 200, {"Docker-Content-Digest": digest}, b""

    server = scripted_server(script)
    sleeps = Sleeps()

    with registry.Client(settings=settings(allow_anonymous=True), sleep=sleeps) as client:
        resolution = client.resolve(images.parse(f"{server.host}/team/app:1"), [])

    assert resolution.digest == digest
    assert sleeps.waits == [0.5, 1.0]


def test_same_origin_redirect_keeps_the_authorization_header(
    scripted_server: Callable[..., ScriptedServer],
) -> None:
    digest = "sha256:" + "e" * 64
    expected = "Basic " + base64.b64encode(b"ana:ana-pw-1").decode()

    def script(request: Seen) -> tuple[int, dict[str, str], bytes]:
        if request.headers.get("Authorization") != expected:
            return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
        if request.path == "/v2/team/app/manifests/1":
            return 307, {"Location": "/v2/team/app/manifests/moved"}, b""
        return 200, {"Docker-Content-Digest": digest}, b""

    server = scripted_server(script)

    with registry.Client(settings=settings()) as client:
        resolution = client.resolve(
            images.parse(f"{server.host}/team/app:1"),
            [credential(server.host, "ana", "ana-pw-1", "team-a/regcred")],
        )

    assert resolution.digest == digest
    assert server.seen[-1].path == "/v2/team/app/manifests/moved"


def test_token_realm_redirect_to_another_origin_goes_without_the_credential(
    registry_factory: RegistryFactory,
    token_issuer: TokenIssuer,
    capturing_proxy: Callable[[int], CapturingProxy],
    scripted_server: Callable[..., ScriptedServer],
) -> None:
    secret = canary("realm-redirect")
    token_issuer.users["kim"] = secret
    token_issuer.grants["kim"] = {"*": {"pull"}}
    issuer_proxy = capturing_proxy(token_issuer.port)
    realm = scripted_server(
        lambda request: (307, {"Location": f"http://{issuer_proxy.host}{request.path}"}, b"")
    )
    server = registry_factory(
        token={**token_issuer.registry_config(), "realm": f"{realm.url}/token"}
    )

    with (
        registry.Client(settings=settings()) as client,
        pytest.raises(registry.NoCredentialAccepted) as caught,
    ):
        client.resolve(
            images.parse(f"{server.host}/team/app:1"),
            [credential(server.host, "kim", secret, "team-a/kim")],
        )

    assert "Authorization" in realm.seen[0].headers  # the realm the registry named got it
    sent = issuer_proxy.sent()
    assert b"GET /token?" in sent
    assert b"authorization" not in sent.lower()
    assert not any(s in sent for s in secrets_of("kim", secret))
    assert [r["user"] for r in token_issuer.requests] == [""]  # asked anonymously
    assert caught.value.refusals[0].kind == "unauthorized"


def test_identity_token_grant_is_never_redirected_to_another_origin(
    registry_factory: RegistryFactory,
    token_issuer: TokenIssuer,
    capturing_proxy: Callable[[int], CapturingProxy],
    scripted_server: Callable[..., ScriptedServer],
) -> None:
    """The refresh-token POST carries the identity token in its body: a 307 that keeps the
    body must not carry it to another origin."""
    identity_token = canary("redirected-identity-token")
    token_issuer.refresh_tokens[identity_token] = "frank"
    token_issuer.grants["frank"] = {"*": {"pull"}}
    issuer_proxy = capturing_proxy(token_issuer.port)
    realm = scripted_server(
        lambda request: (307, {"Location": f"http://{issuer_proxy.host}{request.path}"}, b"")
    )
    server = registry_factory(
        token={**token_issuer.registry_config(), "realm": f"{realm.url}/token"}
    )
    frank = credentials.Credential(
        registry=server.host, username="<token>", token=identity_token, source="team-a/frank",
        token_kind="identitytoken",
    )  # fmt: skip

    with (
        registry.Client(settings=settings()) as client,
        pytest.raises(registry.NoCredentialAccepted) as caught,
    ):
        client.pull_token(images.parse(f"{server.host}/team/app:1"), frank)

    assert identity_token.encode() in b"".join(r.body for r in realm.seen)  # the named realm
    assert identity_token.encode() not in issuer_proxy.sent()
    assert token_issuer.requests == []
    assert caught.value.refusals[0].kind == "not-sent"
    assert identity_token not in str(caught.value)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "without a WWW-Authenticate challenge"),
        ('Bearer service="registry"', "without an absolute http(s) realm URL"),
        ("Negotiate abc", "unsupported auth scheme"),
        ('Bearer realm="http://127.0.0.1/token",,service=', "cannot parse"),
    ],
)
def test_malformed_challenge_is_a_clear_permanent_refusal(
    scripted_server: Callable[..., ScriptedServer], header: str | None, expected: str
) -> None:
    headers = {"WWW-Authenticate": header} if header else {}
    server = scripted_server(lambda request: (401, headers, b""))

    with (
        registry.Client(settings=settings()) as client,
        pytest.raises(registry.NoCredentialAccepted) as caught,
    ):
        client.resolve(
            images.parse(f"{server.host}/team/app:1"),
            [credential(server.host, "ana", "ana-pw-1", "team-a/regcred")],
        )

    assert caught.value.refusals[0].kind == "bad-challenge"
    assert expected in str(caught.value)
    assert isinstance(caught.value, registry.errors.PermanentError)


def _open_registry(
    digest_for: dict[str, str], *, busy: list[int]
) -> Callable[[Seen], tuple[int, dict[str, str], bytes]]:
    """A registry without auth that answers 429 (Retry-After: N) for each N in ``busy`` first."""

    def script(request: Seen) -> tuple[int, dict[str, str], bytes]:
        if busy:
            return 429, {"Retry-After": str(busy.pop(0))}, b""
        if request.path == "/v2/":
            return 200, {}, b"{}"
        return 200, {"Docker-Content-Digest": digest_for.get(request.path, "")}, b""

    return script


def test_429_is_retried_after_the_wait_the_registry_asked_for(
    scripted_server: Callable[..., ScriptedServer],
) -> None:
    digest = "sha256:" + "a" * 64
    server = scripted_server(_open_registry({"/v2/team/app/manifests/1": digest}, busy=[2, 1]))
    sleeps = Sleeps()

    with registry.Client(settings=settings(allow_anonymous=True), sleep=sleeps) as client:
        resolution = client.resolve(images.parse(f"{server.host}/team/app:1"), [])

    assert resolution.digest == digest
    assert sleeps.waits == [2.0, 1.0]


def test_retry_after_beyond_the_limit_ends_in_a_temporary_error_with_that_delay(
    scripted_server: Callable[..., ScriptedServer],
) -> None:
    server = scripted_server(_open_registry({}, busy=[600]))
    sleeps = Sleeps()

    with (
        registry.Client(
            settings=settings(allow_anonymous=True), sleep=sleeps, max_retry_wait=30
        ) as client,
        pytest.raises(registry.RegistryUnavailable) as caught,
    ):
        client.resolve(images.parse(f"{server.host}/team/app:1"), [])

    assert caught.value.delay == 600
    assert sleeps.waits == []
    assert "answered 429 (Retry-After 600s)" in str(caught.value)


def test_tls_is_verified_against_the_configured_ca_bundle(
    tmp_path: Path, scripted_server: Callable[..., ScriptedServer]
) -> None:
    _, cert_pem, key_pem = self_signed("127.0.0.1", san=["127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    digest = "sha256:" + "b" * 64
    server = scripted_server(
        _open_registry({"/v2/team/app/manifests/1": digest}, busy=[]),
        tls=(tmp_path / "cert.pem", tmp_path / "key.pem"),
    )
    image = images.parse(f"{server.host}/team/app:1")

    with (
        registry.Client(settings=settings(allow_anonymous=True)) as client,
        pytest.raises(registry.NoCredentialAccepted) as untrusted,
    ):
        client.resolve(image, [])
    trusted_settings = settings(allow_anonymous=True, registry_ca_bundle=str(tmp_path / "cert.pem"))
    with registry.Client(settings=trusted_settings) as client:
        resolution = client.resolve(image, [])

    assert untrusted.value.refusals[0].kind == "tls"
    assert "scan.registry_ca_bundle" in str(untrusted.value)
    assert all(r.method in ("GET", "HEAD") for r in server.seen)
    assert resolution.digest == digest


def test_manifest_get_fallback_computes_the_digest_when_head_gives_none(
    scripted_server: Callable[..., ScriptedServer],
) -> None:
    manifest = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'

    def script(request: Seen) -> tuple[int, dict[str, str], bytes]:
        if request.path == "/v2/":
            return 200, {}, b"{}"
        if request.method == "HEAD":
            return 405, {}, b""
        return 200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, manifest

    server = scripted_server(script)

    with registry.Client(settings=settings(allow_anonymous=True)) as client:
        resolution = client.resolve(images.parse(f"{server.host}/team/app:1"), [])

    import hashlib

    assert resolution.digest == "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert [r.method for r in server.seen] == ["GET", "HEAD", "GET"]
    assert "application/vnd.oci.image.index.v1+json" in server.seen[1].headers["Accept"]


def test_insecure_registry_is_spoken_to_over_plain_http_only_when_listed(
    scripted_server: Callable[..., ScriptedServer],
) -> None:
    digest = "sha256:" + "c" * 64
    server = scripted_server(_open_registry({"/v2/team/app/manifests/1": digest}, busy=[]))
    image = images.parse(f"{server.host}/team/app:1")

    with registry.Client(
        settings=settings(allow_anonymous=True, insecure_registries=(server.host,))
    ) as client:
        resolution = client.resolve(image, [])

    assert resolution.digest == digest
    assert [r.path for r in server.seen] == ["/v2/", "/v2/team/app/manifests/1"]


# ------------------------------------------------------------------- canary


def test_canary_password_appears_in_no_exception_log_or_repr(
    registry_factory: RegistryFactory,
    token_world: TokenWorld,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = canary("everywhere")
    basic = registry_factory(users={"ana": "ana-pw-1"})
    basic.push("team/app", "1")
    token_world.push("team/app", "1")
    token_world.issuer.refresh_tokens["other"] = "nobody"
    caplog.set_level(logging.DEBUG)
    outputs: list[str] = []

    with registry.Client(settings=settings(allow_anonymous=True)) as client:
        for host in (basic.host, token_world.registry.host):
            candidates = [
                credential(host, "ana", secret, "team-a/wrong-password"),
                credentials.Credential(registry=host, username="<token>", token=secret,
                                       source="team-a/token", token_kind="identitytoken"),
                credential(f"127.0.0.1:{services.free_port()}", "ana", secret, "team-a/elsewhere"),
            ]  # fmt: skip
            for image in (f"{host}/team/app:1", f"{host}/team/missing:1"):
                with pytest.raises(registry.NoCredentialAccepted) as caught:
                    client.resolve(images.parse(image), candidates)
                outputs += [str(caught.value), repr(caught.value), repr(caught.value.refusals)]
                outputs += [str(r) for r in caught.value.refusals]
                outputs += [repr(r.as_dict()) for r in caught.value.refusals]
        outputs.append(repr(client))
        outputs.append(repr(list(client.cached_tokens())))

    outputs += [caplog.text, *(r.getMessage() for r in caplog.records)]
    outputs += [basic.access_log(), token_world.registry.access_log()]
    encoded = base64.b64encode(f"ana:{secret}".encode()).decode()
    assert len(caplog.records) > 10
    for text in outputs:
        assert secret not in text
        assert encoded not in text
