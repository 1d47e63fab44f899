"""Issue 19: a redirect never carries registry A's credential to another server.

Registry A is a scripted server on loopback with a planted password (or identity
token); server B sits behind a ``CapturingProxy`` that keeps every byte the
client sent it. Each test checks at B, in B's own capture, that neither the
secret nor the base64 of ``user:password`` ever arrived, and that B's capture
is not empty where the client was supposed to reach it (so the check can fail).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from scanqueue import cli, config, credentials, images, registry
from tests.support.registry_fixtures import (
    Answer,
    CapturingProxy,
    Script,
    ScriptedServer,
    Seen,
    canary,
    self_signed,
)

StartProxy = Callable[[int], CapturingProxy]
StartServer = Callable[..., ScriptedServer]
MANIFEST = "/v2/team/app/manifests/1"


def scan_settings(**overrides: object) -> config.ScanSettings:
    values: dict[str, object] = {"allow_anonymous": False, "registry_timeout_seconds": 5.0}
    values.update(overrides)
    return config.ScanSettings(**values)  # type: ignore[arg-type]


def secrets_of(user: str, password: str) -> list[bytes]:
    """The planted secret and every form of it an Authorization header could carry."""
    pair = f"{user}:{password}".encode()
    encoded = base64.b64encode(pair)
    return [password.encode(), encoded, encoded.rstrip(b"=")]


def assert_never_received(capture: bytes, secrets: list[bytes]) -> None:
    leaked = [s for s in secrets if s in capture]
    assert not leaked, f"server B received a secret: {len(leaked)} form(s) found in its capture"
    assert b"authorization:" not in capture.lower()


def alice(host: str, password: str) -> credentials.Credential:
    return credentials.Credential(registry=host, username="alice", password=password, source="s")


def basic_registry(user: str, password: str, answer: Script) -> Script:
    """Registry A: Basic auth with ``user:password``; authenticated requests get ``answer``."""
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def script(request: Seen) -> Answer:
        if request.headers.get("Authorization") != expected:
            return 401, {"WWW-Authenticate": 'Basic realm="registry-a"'}, b""
        if request.path == "/v2/":
            return 200, {}, b"{}"
        return answer(request)

    return script


def b_answers(status: int = 404, headers: dict[str, str] | None = None) -> Script:
    return lambda request: (status, headers or {}, b"")


def redirect_to(host: str) -> Script:
    """Answer every request with a 307 to the same path on ``host``."""
    return lambda request: (307, {"Location": f"http://{host}{request.path}"}, b"")


def server_b(
    scripted_server: StartServer, capturing_proxy: StartProxy, script: Script | None = None
) -> tuple[ScriptedServer, CapturingProxy]:
    """Server B (``script``, by default a 404 to everything) and the capturing proxy in
    front of it: the client is sent to the proxy, whose capture the tests read."""
    b_server = scripted_server(script or b_answers())
    return b_server, capturing_proxy(b_server.port)


def resolve_refused(
    host: str, password: str, settings: config.ScanSettings | None = None
) -> registry.NoCredentialAccepted:
    """Resolve ``host``/team/app:1 with alice's ``password``; every candidate must be refused."""
    with (
        registry.Client(settings=settings or scan_settings()) as client,
        pytest.raises(registry.NoCredentialAccepted) as caught,
    ):
        client.resolve(images.parse(f"{host}/team/app:1"), [alice(host, password)])
    return caught.value


def generated_location(raw: str, a: ScriptedServer, b_proxy: CapturingProxy) -> str:
    """A generated Location with its placeholders filled: {pa}/{pb} ports, {a}/{b} hosts."""
    location = raw.replace("{pa}", str(a.port)).replace("{pb}", str(b_proxy.port))
    return location.replace("{a}", a.host).replace("{b}", b_proxy.host)


# ------------------------------------------------- 1. two parsers must not disagree

# What B answers after A redirected the manifest to it; {pa} is A's port, {pb} B's (its proxy).
AMBIGUOUS_LOCATIONS = {
    # the issue's example: urlsplit reads host A, urllib3 connects to B
    "backslash": "http://127.0.0.1:{pb}\\@127.0.0.1:{pa}" + MANIFEST,
    "userinfo": "http://127.0.0.1:{pa}@127.0.0.1:{pb}" + MANIFEST,
    "encoded-userinfo": "http://127.0.0.1:{pb}%2F@127.0.0.1:{pa}" + MANIFEST,
    "tab": "http://127.0.0.1:{pb}\t@127.0.0.1:{pa}" + MANIFEST,
    "space": "http://127.0.0.1:{pb} @127.0.0.1:{pa}" + MANIFEST,
    "percent-host": "http://127.0.0.1%3A{pa}:{pb}" + MANIFEST,
    "non-ascii": "http://127.0.0.1:{pb}\u00a0@127.0.0.1:{pa}" + MANIFEST,
    "scheme": "file:///etc/passwd",
}


@pytest.mark.parametrize("form", sorted(AMBIGUOUS_LOCATIONS))
def test_an_ambiguous_location_is_refused_and_b_never_sees_the_password(
    form: str, capturing_proxy: StartProxy, scripted_server: StartServer
) -> None:
    password = canary(f"ambiguous-{form}")
    b_server, b = server_b(scripted_server, capturing_proxy)
    ports: dict[str, int] = {}
    location = AMBIGUOUS_LOCATIONS[form]

    def b_redirects(request: Seen) -> Answer:
        return 302, {"Location": location.format(pa=ports["a"], pb=b.port)}, b""

    b_server.script = b_redirects
    a = scripted_server(basic_registry("alice", password, redirect_to(b.host)))
    ports["a"] = a.port

    refused = resolve_refused(a.host, password)

    capture = b.sent()
    assert_never_received(capture, secrets_of("alice", password))
    assert MANIFEST.encode() in capture, "B was asked for the manifest (without the credential)"
    assert capture.count(b"HEAD ") + capture.count(b"GET ") == 1, "B was asked exactly once"
    refusal = refused.refusals[0]
    assert refusal.kind == "error"
    assert "does not follow" in refusal.detail
    assert password not in str(refused)


def test_the_issue_reproduction_through_registry_resolve_leaks_nothing_to_b(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    capturing_proxy: StartProxy,
    scripted_server: StartServer,
) -> None:
    """The issue's exact chain, through the CLI the operators (and the workers' code) use."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCANQUEUE_CONFIG", raising=False)
    password = canary("issue-19")
    b_server, b = server_b(scripted_server, capturing_proxy)
    ports: dict[str, int] = {}
    b_server.script = lambda request: (
        302,
        {"Location": f"http://127.0.0.1:{b.port}\\@127.0.0.1:{ports['a']}{request.path}"},
        b"",
    )
    a = scripted_server(basic_registry("alice", password, redirect_to(b.host)))
    ports["a"] = a.port
    auth = base64.b64encode(f"alice:{password}".encode()).decode()
    dockerconfig = tmp_path / "config.json"
    dockerconfig.write_text(json.dumps({"auths": {a.host: {"auth": auth}}}))

    code = cli.main(
        ["registry", "resolve", f"{a.host}/team/app:1", "--dockerconfig", str(dockerconfig)]
    )
    out, err = capsys.readouterr()

    capture = b.sent()
    assert_never_received(capture, secrets_of("alice", password))
    assert MANIFEST.encode() in capture
    assert any("Authorization" in r.headers for r in a.seen), "A got its own credential"
    assert code == 3, err
    refusals = json.loads(out)["refusals"]
    assert [r["answer"] for r in refusals] == ["error"]
    assert "backslash" in refusals[0]["detail"]
    assert password not in out + err and auth not in out + err


# ------------------------------------- 2. a challenge counts only from the registry


@pytest.mark.parametrize("where", ["ping", "manifest"])
@pytest.mark.parametrize("scheme", ["Bearer", "Basic"])
def test_a_401_from_a_redirect_target_is_refused_and_its_realm_gets_nothing(
    where: str, scheme: str, capturing_proxy: StartProxy, scripted_server: StartServer
) -> None:
    password = canary(f"foreign-challenge-{where}")
    b_server, b = server_b(scripted_server, capturing_proxy)
    challenge = (
        f'Bearer realm="http://{b.host}/token",service="b"' if scheme == "Bearer"
        else 'Basic realm="b"'
    )  # fmt: skip

    def b_script(request: Seen) -> Answer:
        if request.path.startswith("/token"):
            return 200, {"Content-Type": "application/json"}, b'{"token": "b-token"}'
        return 401, {"WWW-Authenticate": challenge}, b""

    b_server.script = b_script

    def a_script(request: Seen) -> Answer:
        if request.path == "/v2/" and where == "manifest":
            return 200, {}, b"{}"  # an open /v2/: the manifest request meets B's challenge
        return 307, {"Location": f"http://{b.host}{request.path}"}, b""

    a = scripted_server(a_script)

    refused = resolve_refused(a.host, password)

    capture = b.sent()
    assert_never_received(capture, secrets_of("alice", password))
    assert (b"/v2/ " if where == "ping" else MANIFEST.encode()) in capture
    assert b"/token" not in capture, "B's realm was never asked"
    refusal = refused.refusals[0]
    assert refusal.kind == "bad-challenge"
    assert "challenge from another origin" in refusal.detail
    assert not any("Authorization" in r.headers for r in a.seen)


# ---------------------------------------- 3. the refresh-token body stays at home


@pytest.mark.parametrize("status", [307, 308])
@pytest.mark.parametrize("form", ["other-origin", "backslash"])
def test_a_refresh_token_body_is_never_redirected_to_b(
    status: int, form: str, capturing_proxy: StartProxy, scripted_server: StartServer
) -> None:
    identity_token = canary(f"refresh-{status}-{form}")
    _, b = server_b(
        scripted_server, capturing_proxy, b_answers(200, {"Content-Type": "application/json"})
    )
    ports: dict[str, int] = {}

    def a_script(request: Seen) -> Answer:
        realm = f"http://127.0.0.1:{ports['a']}/token"
        if request.path == "/token":
            location = (
                f"http://{b.host}/token" if form == "other-origin"
                else f"http://{b.host}\\@127.0.0.1:{ports['a']}/token"
            )  # fmt: skip
            return status, {"Location": location}, b""
        return 401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="a"'}, b""

    a = scripted_server(a_script)
    ports["a"] = a.port
    frank = credentials.Credential(
        registry=a.host, username="<token>", token=identity_token, source="team-a/frank",
        token_kind="identitytoken",
    )  # fmt: skip

    with (
        registry.Client(settings=scan_settings()) as client,
        pytest.raises(registry.NoCredentialAccepted) as caught,
    ):
        client.pull_token(images.parse(f"{a.host}/team/app:1"), frank)

    assert identity_token.encode() not in b.sent()
    assert b.sent() == b"", "B was never contacted"
    posted = [r for r in a.seen if r.method == "POST"]
    assert posted and identity_token.encode() in posted[0].body, "A's own realm got the grant"
    assert caught.value.refusals[0].kind == ("not-sent" if form == "other-origin" else "error")
    assert identity_token not in str(caught.value)


# ------------------------------------------------------- 4. no plain-http downgrade


@pytest.mark.parametrize(
    ("target", "reached"),
    [
        ("127.1:{pb}", False),  # resolves to loopback, but is not a loopback name: refused
        ("127.1:{pb}\\@127.0.0.1:{pb}", False),
        ("127.0.0.1:{pb}", True),  # loopback: plain http allowed, but not the credential
    ],
)
def test_an_https_registry_redirecting_to_plain_http_sends_no_credential(
    target: str,
    reached: bool,
    tmp_path: Path,
    capturing_proxy: StartProxy,
    scripted_server: StartServer,
) -> None:
    password = canary("downgrade")
    _, cert_pem, key_pem = self_signed("127.0.0.1", san=["127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    _, b = server_b(scripted_server, capturing_proxy)
    location = "http://" + target.format(pb=b.port) + MANIFEST
    a = scripted_server(
        basic_registry("alice", password, lambda r: (307, {"Location": location}, b"")),
        tls=(tmp_path / "cert.pem", tmp_path / "key.pem"),
    )

    refused = resolve_refused(
        a.host, password, scan_settings(registry_ca_bundle=str(tmp_path / "cert.pem"))
    )

    capture = b.sent()
    assert_never_received(capture, secrets_of("alice", password))
    assert any("Authorization" in r.headers for r in a.seen), "A (https) got its credential"
    if reached:
        assert MANIFEST.encode() in capture
        assert refused.refusals[0].kind == "not-found"
    else:
        assert capture == b""
        assert refused.refusals[0].kind in ("not-sent", "error")


# --------------------------------------------- 5. generated Location values

_PIECES = [
    "http://", "https://", "HTTP://", "hTtP://", "//", "http:", "http:/", "/", "\\", "\\\\",
    "@", ":", "#", "?", ".", "..", "%40", "%5C", "%5c", "%2F", "%3A", "%00", "%2e",
    "\t", " ", "\x00", "\x7f", "\x0b", "\u00a0", "\u00ff",
    "127.0.0.1", "127.1", "localhost", "LOCALHOST", "[::1]", "0x7f.1", "2130706433",
    "{a}", "{b}", "127.0.0.1:{pa}", "127.0.0.1:{pb}", "localhost:{pa}", "localhost:{pb}",
    "user", "user:pw@", "/v2/team/app/manifests/1",
]  # fmt: skip
_LATIN1_NO_CRLF = st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\r\n")
LOCATIONS = st.one_of(
    st.lists(st.sampled_from(_PIECES), min_size=1, max_size=8).map("".join),
    st.text(alphabet=_LATIN1_NO_CRLF, max_size=40),
    st.tuples(
        st.sampled_from(["http://", "//", "https://", "http:\\\\", "http:/\\"]),
        st.sampled_from(["127.0.0.1:{pb}", "127.0.0.1:{pa}", "localhost:{pb}"]),
        st.text(alphabet=_LATIN1_NO_CRLF, max_size=6),
        st.sampled_from(["@", "\\@", "#@", "?@", "%40", ""]),
        st.sampled_from(["127.0.0.1:{pa}", "127.0.0.1:{pb}", ""]),
        st.sampled_from([MANIFEST, "", "/x"]),
    ).map("".join),
)


class World:
    """A and B (behind its capturing proxy), started once and shared by generated examples."""

    def __init__(self, start_proxy: StartProxy, start_server: StartServer) -> None:
        self.password = canary("generated")
        self.location = ""
        self.b, self.b_proxy = server_b(start_server, start_proxy, self._b_script)
        self.a = start_server(basic_registry("alice", self.password, self._a_answer))

    def _a_answer(self, request: Seen) -> Answer:
        return 302, {"Location": self.location}, b""

    def _b_script(self, request: Seen) -> Answer:
        # B redirects once more, to the same generated value (relative forms then
        # resolve against B), then answers 404
        if "again" not in request.path and self.location:
            return 302, {"Location": self.location + "?again"}, b""
        return 404, {}, b""


@pytest.fixture
def world(capturing_proxy: StartProxy, scripted_server: StartServer) -> World:
    return World(capturing_proxy, scripted_server)


@pytest.fixture
def client() -> Iterator[registry.Client]:
    """One client for all generated examples, as a worker keeps one (its TLS context costs
    ~0.1 s to build); endpoint and token caches then carry across examples, as in a worker."""
    with registry.Client(
        settings=scan_settings(registry_timeout_seconds=2.0), max_attempts=1
    ) as shared:
        yield shared


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=LOCATIONS)
@example(raw="http://127.0.0.1:{pb}\\@127.0.0.1:{pa}" + MANIFEST)  # the issue's example
@example(raw="//127.0.0.1:{pb}\\@127.0.0.1:{pa}" + MANIFEST)
@example(raw="http://127.0.0.1:{pa}" + MANIFEST)  # back to A: A may get its credential
def test_for_any_location_only_the_registry_itself_ever_receives_the_credential(
    raw: str, world: World, client: registry.Client
) -> None:
    """Generated redirect chains (A redirects to the value, B to it again): every request
    that carries the credential reached A under A's own name (its Host header), and B's
    own capture never holds the secret."""
    world.location = generated_location(raw, world.a, world.b_proxy)
    seen_before = len(world.a.seen)

    try:
        client.resolve(
            images.parse(f"{world.a.host}/team/app:1"), [alice(world.a.host, world.password)]
        )
    except (registry.NoCredentialAccepted, registry.RegistryUnavailable) as e:
        assert world.password not in str(e)

    for request in world.a.seen[seen_before:]:
        if "Authorization" in request.headers:
            assert request.headers.get("Host") == world.a.host, (world.location, request.path)
    assert_never_received(world.b_proxy.sent(), secrets_of("alice", world.password))
    assert not any("Authorization" in r.headers for r in world.b.seen), world.location


class RealmWorld:
    """A bearer registry whose own realm (on A's origin) redirects the token request to a
    generated ``Location``; B (behind its capturing proxy) redirects once more."""

    def __init__(self, start_proxy: StartProxy, start_server: StartServer) -> None:
        self.password = canary("generated-realm-password")
        self.identity_token = canary("generated-realm-identity")
        self.location = ""
        self.status = 307
        self.b, self.b_proxy = server_b(start_server, start_proxy, self._b_script)
        self.a = start_server(self._a_script)

    def _a_script(self, request: Seen) -> Answer:
        if request.path.startswith("/token"):
            return self.status, {"Location": self.location}, b""
        realm = f"http://{self.a.host}/token"
        return 401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="a"'}, b""

    def _b_script(self, request: Seen) -> Answer:
        if "again" not in request.path and self.location:
            return self.status, {"Location": self.location + "?again"}, b""
        return 404, {}, b""

    def secrets(self) -> list[bytes]:
        return [*secrets_of("alice", self.password), self.identity_token.encode()]


@pytest.fixture
def realm_world(capturing_proxy: StartProxy, scripted_server: StartServer) -> RealmWorld:
    return RealmWorld(capturing_proxy, scripted_server)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    raw=LOCATIONS,
    status=st.sampled_from([301, 302, 303, 307, 308]),
    identity=st.booleans(),
)
@example(raw="http://127.0.0.1:{pb}\\@127.0.0.1:{pa}/token", status=307, identity=True)
@example(raw="http://127.0.0.1:{pb}\\@127.0.0.1:{pa}/token", status=302, identity=False)
@example(raw="http://127.0.0.1:{pb}/token", status=308, identity=True)
def test_for_any_location_a_token_request_carries_its_credential_only_to_the_realm_origin(
    raw: str, status: int, identity: bool, realm_world: RealmWorld, client: registry.Client
) -> None:
    """The realm's own redirects (generated): the Basic header of a token ``GET`` and the
    identity token in a refresh-token ``POST`` body reach only the realm's origin, as the
    server there received them; B's capture never holds either."""
    world = realm_world
    world.location = generated_location(raw, world.a, world.b_proxy)
    world.status = status
    seen_before = len(world.a.seen)
    candidate = (
        credentials.Credential(
            registry=world.a.host, username="<token>", token=world.identity_token,
            source="s", token_kind="identitytoken",
        ) if identity else alice(world.a.host, world.password)
    )  # fmt: skip

    try:
        client.resolve(images.parse(f"{world.a.host}/team/app:1"), [candidate])
    except (registry.NoCredentialAccepted, registry.RegistryUnavailable) as e:
        assert world.password not in str(e) and world.identity_token not in str(e)

    for request in world.a.seen[seen_before:]:
        carries = "Authorization" in request.headers or world.identity_token.encode() in (
            request.body
        )
        if carries:
            assert request.headers.get("Host") == world.a.host, (world.location, request.path)
    capture = world.b_proxy.sent()
    leaked = [s for s in world.secrets() if s in capture]
    assert not leaked, f"server B received a secret after {world.location!r}"
    assert b"authorization:" not in capture.lower()
