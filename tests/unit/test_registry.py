"""The registry client's pure parts: challenges, whose credential is whose, scrubbing."""

from __future__ import annotations

import base64

import pytest

from scanqueue import config, credentials, errors, images, registry


@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        ('Basic realm="scanqueue-test"', "basic", {"realm": "scanqueue-test"}),
        ("basic", "basic", {}),
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/nginx:pull"',
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/nginx:pull",
            },
        ),
        (
            'Bearer realm="http://127.0.0.1:5001/token", service=reg, '
            'error="insufficient_scope", scope="repository:a/b:pull,push"',
            "bearer",
            {
                "realm": "http://127.0.0.1:5001/token",
                "service": "reg",
                "error": "insufficient_scope",
                "scope": "repository:a/b:pull,push",
            },
        ),
        ('BEARER Realm="https://a.example/t\\"x"', "bearer", {"realm": 'https://a.example/t"x'}),
    ],
)
def test_challenges_parse_into_scheme_and_parameters(
    header: str, scheme: str, params: dict[str, str]
) -> None:
    challenge = registry.parse_challenge(header)
    assert challenge.scheme == scheme
    assert dict(challenge.params) == params


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("Negotiate abc", "unsupported auth scheme"),
        ("", "unsupported auth scheme"),
        ('Bearer service="x"', "absolute http(s) realm"),
        ('Bearer realm="/token"', "absolute http(s) realm"),
        ('Bearer realm="ftp://a.example/token"', "absolute http(s) realm"),
        ('Bearer realm="https://a.example/t",,service=x', "cannot parse"),
        ('Bearer realm="https://a.example/t" service', "cannot parse"),
        ('Basic realm="unterminated', "cannot parse"),
    ],
)
def test_malformed_challenges_say_what_is_wrong(header: str, says: str) -> None:
    with pytest.raises(registry.ChallengeError, match=r".*") as caught:
        registry.parse_challenge(header)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("key", "target", "belongs"),
    [
        ("registry.example.com", "registry.example.com", True),
        ("REGISTRY.example.com", "registry.example.com", True),
        ("registry.example.com", "other.example.com", False),
        ("127.0.0.1:5000", "127.0.0.1:5000", True),
        ("127.0.0.1:5000", "127.0.0.1:5001", False),
        ("127.0.0.1", "127.0.0.1:5000", False),
        ("127.0.0.1:5000", "127.0.0.1", False),
        ("*.example.com", "registry.example.com", True),
        ("*.example.com", "a.registry.example.com", False),
        ("*.example.com", "example.com", False),
        ("reg?.example.com", "reg1.example.com", True),
        ("index.docker.io", "docker.io", True),
        ("docker.io", "docker.io", True),
        ("registry-1.docker.io", "docker.io", True),
        ("index.docker.io", "quay.io", False),
        ("[::1]:5000", "[::1]:5000", True),
        ("[::1]:5000", "[::1]:5001", False),
    ],
)
def test_a_credential_belongs_only_to_its_own_host_and_port(
    key: str, target: str, belongs: bool
) -> None:
    assert registry.credential_belongs_to(key, target) is belongs


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("10.0.0.1:5000", False),
        ("registry.example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_hosts_are_recognised(host: str, loopback: bool) -> None:
    assert registry.is_loopback(host) is loopback


def test_scrub_removes_password_token_and_auth_from_text() -> None:
    secret = "s3cret-password"
    credential = credentials.Credential(
        registry="r.example", username="ana", password=secret, token="tok-123", source="x"
    )
    auth = base64.b64encode(f"ana:{secret}".encode()).decode()
    text = f"got {secret} and {auth} and {auth.rstrip('=')} and tok-123"
    scrubbed = registry.scrub(text, credential)
    assert secret not in scrubbed and auth not in scrubbed and "tok-123" not in scrubbed
    assert scrubbed.count("***") == 4
    assert registry.scrub("nothing here", None) == "nothing here"


def test_refusal_names_source_user_and_answer_but_never_a_secret() -> None:
    refusal = registry.Refusal(
        source="team-a/regcred",
        registry="r.example",
        username="ana",
        kind="unauthorized",
        status=401,
        detail="401 credential refused: authentication required",
    )
    assert str(refusal) == (
        "team-a/regcred (user 'ana' for r.example): 401 credential refused: authentication required"
    )
    assert refusal.as_dict() == {
        "source": "team-a/regcred",
        "registry": "r.example",
        "username": "ana",
        "answer": "unauthorized",
        "status": 401,
        "detail": "401 credential refused: authentication required",
    }
    assert not refusal.temporary
    anonymous = registry.Refusal("anonymous", "", "", "unreachable", None, "connection refused")
    assert str(anonymous) == "anonymous (anonymous): connection refused"
    assert anonymous.temporary
    token = registry.Refusal("s", "r.example", "", "not-sent", None, "Basic registry")
    assert str(token) == "s (token for r.example): Basic registry"


def test_no_credential_accepted_is_permanent_and_unavailable_is_temporary() -> None:
    image = images.parse("r.example/team/app:1")
    refusal = registry.Refusal("s", "r.example", "ana", "not-found", 404, "404 not found")
    permanent = registry.NoCredentialAccepted(image, [refusal], "Check the secret.")
    temporary = registry.RegistryUnavailable(image, [refusal], delay=5.0)
    assert isinstance(permanent, errors.PermanentError)
    assert isinstance(temporary, errors.TemporaryError)
    assert temporary.delay == 5.0
    assert str(permanent) == (
        "no credential accepted for r.example/team/app:1: "
        "s (user 'ana' for r.example): 404 not found. Check the secret."
    )


def test_client_needs_at_least_one_attempt() -> None:
    with pytest.raises(errors.ConfigError, match="max_attempts"):
        registry.Client(settings=config.ScanSettings(), max_attempts=0)


def test_credential_for_another_registry_is_refused_before_any_network_use() -> None:
    # the host does not exist: any network use would be an "unreachable" answer instead
    client = registry.Client(settings=config.ScanSettings(allow_anonymous=False))
    other = credentials.Credential(registry="a.invalid", username="ana", password="pw", source="s")
    with pytest.raises(registry.NoCredentialAccepted) as caught:
        client.resolve(images.parse("b.invalid/team/app:1"), [other])
    assert [r.kind for r in caught.value.refusals] == ["not-sent"]
    assert "belongs to a.invalid, not b.invalid" in str(caught.value)
