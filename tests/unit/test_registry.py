"""The registry client's pure parts: challenges, whose credential is whose, scrubbing."""

from __future__ import annotations

import base64
import urllib.parse

import pytest
import urllib3.util
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scanqueue import config, credentials, errors, images, registry
from scanqueue.registry import urls


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
    ("key", "image"),
    [
        ("registry.example.invalid", "other.example.invalid/team/app:1"),
        ("127.0.0.1:5000", "127.0.0.1:5001/team/app:1"),
        ("127.0.0.1", "127.0.0.1:5000/team/app:1"),
        ("127.0.0.1:5000", "127.0.0.1/team/app:1"),
        ("*.example.invalid", "a.registry.example.invalid/team/app:1"),
        ("registry.example.invalid/team", "registry.example.invalid/other/app:1"),
        # fnmatch reads [!x] as "not x"; the kubelet (Go's filepath.Match) reads it literally
        ("reg[!x].example.invalid", "rega.example.invalid/team/app:1"),
        # a malformed glob: fnmatch reads "[]a]" as "']' or 'a'", Go refuses it (no match)
        ("reg[]a].example.invalid", "rega.example.invalid/team/app:1"),
        ("registry-1.docker.io", "docker.io/library/nginx:1"),
        ("[::1]:5000", "[::1]:5001/team/app:1"),
    ],
)
def test_a_credential_the_kubelet_would_not_use_is_refused_before_any_network_use(
    key: str, image: str
) -> None:
    # the hosts do not exist (or nothing listens): any network use would be "unreachable"
    client = registry.Client(settings=config.ScanSettings(allow_anonymous=False))
    credential = credentials.Credential(registry=key, username="ana", password="pw", source="s")
    with pytest.raises(registry.NoCredentialAccepted) as caught:
        client.resolve(images.parse(image), [credential])
    assert [r.kind for r in caught.value.refusals] == ["not-sent"]
    assert f"belongs to {key}, not " in str(caught.value)


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


# --- issue 19: one parser decides and connects ------------------------------------------

_BASE = "http://127.0.0.1:5000/v2/team/app/manifests/1"
_PIECES = [
    "http://", "https://", "HTTPS://", "//", "http:", "/", "\\", "@", ":", "#", "?", ".",
    "%40", "%5C", "%2F", "%3A", "%00", "\t", " ", "\x00", "\u00a0", "\u3002", "\uff0e",
    "127.0.0.1", "127.0.0.1:5000", "127.0.0.1:6000", "[::1]", "[::1]:5000", "localhost",
    "a.example", "A.EXAMPLE:443", "user:pw", "/v2/x",
]  # fmt: skip
_PRINTABLE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12)
_LOCATIONS = st.one_of(
    st.lists(st.sampled_from(_PIECES), min_size=1, max_size=8).map("".join),
    st.text(max_size=40),
    # printable ASCII passes the character check: the parsers must still agree on it
    st.tuples(
        st.sampled_from(["http://", "https://", "//", "HTTP://", ""]),
        _PRINTABLE,
        st.sampled_from(["127.0.0.1:5000", "a.example", "[::1]", ""]),
        _PRINTABLE,
    ).map("".join),
)


@settings(max_examples=1500, deadline=None)
@given(location=_LOCATIONS)
@example(location="HTTP://0X0")
def test_a_location_is_either_refused_or_read_the_same_by_every_parser(location: str) -> None:
    """Whatever ``urls.join`` accepts, urllib3 (which connects) and urllib.parse read with
    the origin the client decides on; a credential's origin is never a guess."""
    base = urls.parse(_BASE)
    try:
        target = urls.join(base, location)
    except urls.UnsafeURLError as e:
        assert str(e)
        return
    connected = urllib3.util.parse_url(target.url)
    assert connected.auth is None
    assert (connected.scheme, connected.host) == (target.origin.scheme, target.origin.host)
    assert (connected.port or {"http": 80, "https": 443}[target.origin.scheme]) == (
        target.origin.port
    )
    # what a client that joined and handed the raw string to urllib3 would have reached
    naive = urllib3.util.parse_url(urllib.parse.urljoin(_BASE, location))
    naive_port = naive.port or {"http": 80, "https": 443}.get(naive.scheme or "", 0)
    # host names are case-insensitive; urllib3 lower-cases most but not all (``0X0``)
    assert (naive.scheme, (naive.host or "").lower(), naive_port) == (
        target.origin.scheme,
        target.origin.host,
        target.origin.port,
    )
    split = urllib.parse.urlsplit(target.url)
    assert (split.hostname or "") == target.origin.host.strip("[]")


@pytest.mark.parametrize(
    ("location", "says"),
    [
        ("http://127.0.0.1:6000\\@127.0.0.1:5000/v2/", "backslash"),
        ("http://ana@127.0.0.1:5000/v2/", "userinfo"),
        ("http://127.0.0.1:5000%2F@127.0.0.1:6000/", "userinfo"),
        ("http://127.0.0.1:5000\t@x/", "control character 0x09"),
        ("http://127.0.0.1 :5000/", "a space"),
        ("http://127.0.0.1%2e:5000/", "percent-encoded"),
        ("http://a.example\u3002com/", "non-ASCII"),
        ("ftp://127.0.0.1:5000/", "not http or https"),
        ("javascript:alert(1)", "not http or https"),
        ("http://127.0.0.1:99999/", "cannot be parsed"),
        ("A://[", "cannot be parsed"),
        ("http://a.example;x/", "no registry host name"),
        ("//a{b}/", "no registry host name"),
        ("http://127.0.0.1:6000[@127.0.0.1:5000/", "cannot be parsed"),
        ("", "without a Location"),
    ],
)
def test_ambiguous_locations_are_refused_saying_why(location: str, says: str) -> None:
    with pytest.raises(urls.UnsafeURLError) as caught:
        urls.join(urls.parse(_BASE), location)
    assert says in str(caught.value)


def test_a_url_without_a_host_is_refused() -> None:
    with pytest.raises(urls.UnsafeURLError, match="no host"):
        urls.parse("http:///v2/")


@pytest.mark.parametrize(
    ("location", "origin"),
    [
        ("/v2/other", ("http", "127.0.0.1", 5000)),
        ("//a.example/x", ("http", "a.example", 80)),
        ("HTTPS://A.Example/x", ("https", "a.example", 443)),
        ("https://a.example:443/x", ("https", "a.example", 443)),
        ("http://[::1]:5000/x", ("http", "[::1]", 5000)),
        ("x?y#z", ("http", "127.0.0.1", 5000)),
    ],
)
def test_plain_locations_resolve_to_the_origin_urllib3_connects_to(
    location: str, origin: tuple[str, str, int]
) -> None:
    target = urls.join(urls.parse(_BASE), location)
    assert target.origin == urls.Origin(*origin)
