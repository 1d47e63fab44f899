"""Fixtures for the registry client's tests: a token issuer, two registries, a capturing proxy.

Everything here is a real server on 127.0.0.1 and a free port, started by the
test and stopped after it:

- ``TokenIssuer``: the token server of the distribution token-auth spec, a few
  lines of ``http.server`` + ``pyjwt`` + ``cryptography``. It signs ES256 JWTs
  whose header carries its self-signed certificate as ``x5c``; a
  ``docker-registry`` configured with that certificate as ``rootcertbundle``
  verifies them. It knows users (Basic auth on ``GET``), refresh tokens
  (``identitytoken``, OAuth2 ``POST``), and per-subject grants.
- ``CapturingProxy``: a TCP forwarder that keeps every byte a client sent, so a
  test can prove a credential never reached the server behind it.
- ``ScriptedServer``: an HTTP server whose answers a test writes (malformed
  challenges, 429/503 with Retry-After, redirects to another origin).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import json
import os
import socket
import ssl
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import services

TOKEN_SERVICE = "scanqueue-test-registry"
TOKEN_ISSUER = "scanqueue-test-issuer"

# ------------------------------------------------------------------ helpers


def self_signed(common_name: str, *, san: list[str] | None = None) -> tuple[Any, bytes, bytes]:
    """An EC P-256 key and a self-signed certificate: (key, cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if san:
        import ipaddress

        names: list[x509.GeneralName] = []
        for entry in san:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                names.append(x509.DNSName(entry))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key, cert_pem, key_pem


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def _serve(
    handler: type[BaseHTTPRequestHandler], *, tls: tuple[Path, Path] | None = None
) -> tuple[_Server, threading.Thread]:
    server = _Server(("127.0.0.1", 0), handler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="sq-test-http", daemon=True)
    thread.start()
    return server, thread


# ------------------------------------------------------------- token issuer


@dataclasses.dataclass
class TokenIssuer:
    """The token server a token-auth ``docker-registry`` trusts (see the module docstring).

    ``users``: name -> password (Basic auth on ``GET /token``).
    ``refresh_tokens``: identity token -> user name (``POST /token``, refresh_token grant).
    ``grants``: subject ("" = anonymous) -> repository ("*" = any) -> actions.
    ``requests``: one dict per request: method, user (None when anonymous or refused),
    grant_type, scope, status.
    """

    directory: Path
    users: dict[str, str] = dataclasses.field(default_factory=dict)
    refresh_tokens: dict[str, str] = dataclasses.field(default_factory=dict)
    grants: dict[str, dict[str, set[str]]] = dataclasses.field(default_factory=dict)
    expires_in: int = 300
    requests: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    port: int = 0
    # Trivy (go-containerregistry) refuses a realm on a private IP literal; "localhost" passes
    realm_host: str = "127.0.0.1"

    def rotate_key(self) -> None:
        """Sign with a new key and certificate (``cert_path`` rewritten; restart the registry)."""
        key, cert_pem, _ = self_signed(TOKEN_ISSUER)
        self._key = key
        self.cert_path.write_bytes(cert_pem)
        der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
        self._x5c = [base64.b64encode(der).decode()]

    def start(self) -> TokenIssuer:
        self.rotate_key()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                user = issuer._basic_user(self.headers.get("Authorization"))
                if user is None:
                    issuer._refuse(self, "GET", query.get("scope", []), "bad username or password")
                    return
                issuer._grant(self, "GET", user, "basic", query.get("scope", []))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                scopes = " ".join(form.get("scope", [])).split()
                if form.get("grant_type") != ["refresh_token"]:
                    issuer._refuse(self, "POST", scopes, "unsupported grant_type", status=400)
                    return
                user = issuer.refresh_tokens.get((form.get("refresh_token") or [""])[0])
                if user is None:
                    issuer._refuse(self, "POST", scopes, "invalid refresh token")
                    return
                issuer._grant(self, "POST", user, "refresh_token", scopes)

        self._server, self._thread = _serve(Handler)
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def cert_path(self) -> Path:
        return self.directory / "token-cert.pem"

    @property
    def realm(self) -> str:
        return f"http://{self.realm_host}:{self.port}/token"

    def registry_config(self) -> dict[str, str]:
        """The ``auth.token`` section of a ``docker-registry`` that trusts this issuer."""
        return {
            "realm": self.realm,
            "service": TOKEN_SERVICE,
            "issuer": TOKEN_ISSUER,
            "rootcertbundle": str(self.cert_path),
        }

    # -------------------------------------------------------------- internals

    def _basic_user(self, header: str | None) -> str | None:
        if not header:
            return ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None
        if user in self.users and self.users[user] == password:
            return user
        return None

    def _refuse(
        self,
        handler: BaseHTTPRequestHandler,
        method: str,
        scopes: list[str],
        message: str,
        *,
        status: int = 401,
    ) -> None:
        self.requests.append({"method": method, "user": None, "scope": scopes, "status": status})
        body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": message}]}).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _grant(
        self,
        handler: BaseHTTPRequestHandler,
        method: str,
        user: str,
        grant_type: str,
        scopes: list[str],
    ) -> None:
        allowed = self.grants.get(user, {})
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            may = allowed.get(name, set()) | allowed.get("*", set())
            granted = sorted(set(actions.split(",")) & may)
            access.append({"type": "repository", "name": name, "actions": granted})
        now = int(datetime.datetime.now(datetime.UTC).timestamp())
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": user,
            "aud": TOKEN_SERVICE,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": self._x5c})
        self.requests.append(
            {"method": method, "user": user, "grant_type": grant_type, "scope": scopes,
             "status": 200}
        )  # fmt: skip
        body = json.dumps(
            {"token": token, "access_token": token, "expires_in": self.expires_in,
             "issued_at": datetime.datetime.now(datetime.UTC).isoformat()}
        ).encode()  # fmt: skip
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


# ---------------------------------------------------------- capturing proxy


@dataclasses.dataclass
class CapturingProxy:
    """Forwards TCP from 127.0.0.1:``port`` to ``target_port``; keeps what clients sent."""

    target_port: int
    port: int = 0

    def start(self) -> CapturingProxy:
        self._sent = bytearray()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()
        return self

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def sent(self) -> bytes:
        """Every byte any client sent through the proxy so far."""
        with self._lock:
            return bytes(self._sent)

    def stop(self) -> None:
        self._stopping.set()
        self._accepting.join(5)
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink, record in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(
                    target=self._pump, args=(source, sink, record), daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        source.settimeout(0.2)
        try:
            while not self._stopping.is_set():
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if record:
                    with self._lock:
                        self._sent.extend(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


# ------------------------------------------------------------ scripted HTTP


@dataclasses.dataclass(frozen=True)
class Seen:
    """One request a ``ScriptedServer`` received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], bytes]
Script = Callable[[Seen], Answer]


@dataclasses.dataclass
class ScriptedServer:
    """An HTTP server on 127.0.0.1 whose answers come from ``script``; it records requests."""

    script: Script
    tls: tuple[Path, Path] | None = None  # (certificate PEM, key PEM): serve https
    seen: list[Seen] = dataclasses.field(default_factory=list)
    port: int = 0

    def start(self) -> ScriptedServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Seen(self.command, self.path, dict(self.headers.items()),
                               self.rfile.read(length) if length else b"")  # fmt: skip
                owner.seen.append(request)
                status, headers, body = owner.script(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = _any

        self._server, self._thread = _serve(Handler, tls=self.tls)
        self.port = self._server.server_address[1]
        return self

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# ----------------------------------------------------------------- fixtures


@dataclasses.dataclass
class TokenWorld:
    """A token-auth registry and the issuer it trusts; ``pusher`` may push anywhere."""

    registry: services.Registry
    issuer: TokenIssuer
    pusher: tuple[str, str] = ("pusher", "pusher-pw-1")

    def push(self, repository: str, tag: str, *, content: str | None = None) -> str:
        user, password = self.pusher
        return self.registry.push(repository, tag, content=content, user=user, password=password)


@pytest.fixture
def token_issuer() -> Iterator[TokenIssuer]:
    """A started token issuer (no users yet: add to ``users``/``grants``/``refresh_tokens``)."""
    with services.tempdir("sq-token-") as tmp:
        issuer = TokenIssuer(tmp).start()
        try:
            yield issuer
        finally:
            issuer.stop()


@pytest.fixture
def token_world(
    registry_factory: Callable[..., services.Registry], token_issuer: TokenIssuer
) -> TokenWorld:
    """A ``docker-registry`` with token auth that verifies ``token_issuer``'s signed tokens.

    Its realm is on ``localhost``: the real Trivy refuses a realm on a private IP literal
    ("realm host is a private or link-local address"), and scan pods run the real Trivy.
    """
    token_issuer.realm_host = "localhost"
    world = TokenWorld(registry_factory(token=token_issuer.registry_config()), token_issuer)
    user, password = world.pusher
    token_issuer.users[user] = password
    token_issuer.grants[user] = {"*": {"pull", "push"}}
    return world


@pytest.fixture
def capturing_proxy() -> Iterator[Callable[[int], CapturingProxy]]:
    """Start ``CapturingProxy(target_port)`` instances; all stopped after the test."""
    started: list[CapturingProxy] = []

    def start(target_port: int) -> CapturingProxy:
        proxy = CapturingProxy(target_port).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def scripted_server() -> Iterator[Callable[..., ScriptedServer]]:
    """Start ``ScriptedServer(script)`` instances; all stopped after the test."""
    started: list[ScriptedServer] = []

    def start(script: Script, *, tls: tuple[Path, Path] | None = None) -> ScriptedServer:
        server = ScriptedServer(script, tls=tls).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def canary(label: str) -> str:
    """A password no code would ever produce by chance, to search outputs for."""
    return f"CANARY-{label}-{os.urandom(6).hex()}"
