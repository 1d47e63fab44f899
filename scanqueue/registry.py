"""OCI distribution v2 client: which credential a registry accepts, and what digest a tag names.

A worker asks the registry before it spends a scan Job: the digest is the
dedupe key and pins the scan to exactly what runs, and the first accepted
candidate is the one credential the Job gets. Candidates are tried one at a
time, in the order given, never merged.

This module must never:

- send an ``Authorization`` header to any origin other than the registry the
  credential belongs to (host *and* port) or the token realm that registry
  named; redirects to another origin go without it;
- speak plain ``http://`` to a registry that is neither listed as insecure nor
  on loopback, or skip TLS verification;
- put a password, token or ``auth`` value in a log record, an exception
  message, a ``repr`` or a result (messages are scrubbed a second time as a
  safety net).

It is the only library module, with ``kube`` and ``store``, that does network
I/O; it speaks HTTP through ``urllib3`` with redirects and retries under its
own control.
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import fnmatch
import hashlib
import ipaddress
import json
import logging
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import urllib3

import scanqueue
from scanqueue import config, credentials, errors, images

logger = logging.getLogger(__name__)

#: Manifest media types a digest lookup accepts: OCI index and manifest, Docker list and v2.
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)

#: Docker Hub's names: a credential under any of them belongs to Docker Hub.
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
DOCKER_HUB_API = "registry-1.docker.io"

_MAX_REDIRECTS = 5
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution refuses larger manifests too
_TOKEN_DEFAULT_SECONDS = 60  # the token spec's default when expires_in is missing
_TOKEN_MARGIN_SECONDS = 10  # renew a cached token this long before it expires
_USER_AGENT = f"scanqueue/{scanqueue.__version__}"
_ENDPOINT_TTL_SECONDS = 300  # how long a registry's scheme and challenge are remembered
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

AnswerKind = Literal[
    "unauthorized",  # 401: the registry (or its token realm) refused the credential
    "forbidden",  # 403: authenticated, but not allowed to pull this repository
    "not-found",  # 404: no such repository or tag (as far as this credential can see)
    "unreachable",  # connection failed, timed out, or 429/5xx after the bounded retries
    "bad-challenge",  # the registry's WWW-Authenticate challenge is missing or malformed
    "tls",  # TLS verification failed
    "not-sent",  # the credential was not sent: it belongs to another registry, or cannot fit
    "error",  # any other answer the protocol does not allow
]
TEMPORARY_KINDS = frozenset({"unreachable"})


@dataclasses.dataclass(frozen=True)
class Refusal:
    """One candidate that was not accepted, and the registry's answer, without any secret."""

    source: str  # where the credential came from ("namespace/secret", a file), "anonymous"
    registry: str  # the credential's registry key; "" for anonymous
    username: str  # "" for anonymous
    kind: AnswerKind
    status: int | None  # the HTTP status when the registry answered with one
    detail: str  # a sentence a person can act on, e.g. "401 UNAUTHORIZED: authentication required"
    retry_after: float | None = None  # seconds, when the registry said so (429/503)

    @property
    def temporary(self) -> bool:
        """True when asking again later may give another answer."""
        return self.kind in TEMPORARY_KINDS

    def __str__(self) -> str:
        if not self.registry:
            who = "anonymous"
        elif self.username:
            who = f"user {self.username!r} for {self.registry}"
        else:
            who = f"token for {self.registry}"
        return f"{self.source} ({who}): {self.detail}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the CLI and scan reasons)."""
        return {
            "source": self.source,
            "registry": self.registry,
            "username": self.username,
            "answer": self.kind,
            "status": self.status,
            "detail": self.detail,
        }


@dataclasses.dataclass(frozen=True)
class Resolution:
    """A reference resolved: its digest and the first credential the registry accepted."""

    image: images.Reference
    digest: str  # "sha256:<hex>" of the manifest (or index) the reference names
    credential: credentials.Credential | None  # None: pulled anonymously
    refusals: tuple[Refusal, ...] = ()  # the candidates tried before it, in order

    @property
    def pinned(self) -> images.Reference:
        """The image pinned by its digest."""
        return self.image.with_digest(self.digest)


def _refusal_lines(refusals: Sequence[Refusal]) -> str:
    return "; ".join(str(r) for r in refusals) or "no candidate to try"


class NoCredentialAccepted(errors.PermanentError):
    """No candidate (nor anonymous, when allowed) got a definite yes from the registry.

    ``refusals`` lists, per candidate in order, its source and the registry's answer.
    """

    def __init__(self, image: images.Reference, refusals: Sequence[Refusal], hint: str) -> None:
        self.image = image
        self.refusals = tuple(refusals)
        super().__init__(f"no credential accepted for {image}: {_refusal_lines(refusals)}. {hint}")


class RegistryUnavailable(errors.TemporaryError):
    """No candidate was accepted and the registry could not be asked for at least one of them.

    Retrying later may help (connection refused, timeout, 429/5xx). ``refusals``
    lists every candidate's answer as for ``NoCredentialAccepted``.
    """

    def __init__(
        self, image: images.Reference, refusals: Sequence[Refusal], *, delay: float | None
    ) -> None:
        self.image = image
        self.refusals = tuple(refusals)
        super().__init__(
            f"registry of {image} did not answer for every candidate: {_refusal_lines(refusals)}",
            delay=delay,
        )


# ----------------------------------------------------------------- helpers


@dataclasses.dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` challenge."""

    scheme: Literal["basic", "bearer"]
    params: Mapping[str, str]


_TOKEN68 = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
_PARAM = re.compile(
    rf"\s*({_TOKEN68})\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|({_TOKEN68}))\s*(?:,|$)", re.ASCII
)


class ChallengeError(ValueError):
    """A ``WWW-Authenticate`` challenge that is missing, malformed or of an unknown scheme."""


def parse_challenge(header: str) -> Challenge:
    """Parse one ``WWW-Authenticate`` value (``Basic realm=...`` or ``Bearer realm=...``).

    Raises ``ChallengeError`` (a ``ValueError``) saying what is wrong when it is
    not a well-formed Basic or Bearer challenge (Bearer needs an absolute ``realm`` URL).
    """
    text = header.strip()
    scheme, _, rest = text.partition(" ")
    lowered = scheme.lower()
    if lowered not in ("basic", "bearer"):
        raise ChallengeError(f"unsupported auth scheme {scheme[:20]!r} (expected Basic or Bearer)")
    params: dict[str, str] = {}
    rest = rest.strip()
    position = 0
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None:
            raise ChallengeError(f"cannot parse the {scheme} challenge parameters")
        key = match.group(1).lower()
        value = match.group(2) if match.group(2) is not None else match.group(3)
        params[key] = re.sub(r"\\(.)", r"\1", value)
        position = match.end()
    if lowered == "bearer":
        realm = params.get("realm", "")
        parsed = urllib.parse.urlsplit(realm)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ChallengeError("Bearer challenge without an absolute http(s) realm URL")
        return Challenge("bearer", params)
    return Challenge("basic", params)


def _split_host(hostport: str) -> tuple[str, int | None]:
    host = hostport.lower()
    if host.startswith("["):
        end = host.find("]")
        port = host[end + 2 :] if host[end + 1 : end + 2] == ":" else ""
        return host[: end + 1], int(port) if port.isdigit() else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, int(port)
    return host, None


def credential_belongs_to(credential_host: str, registry: str) -> bool:
    """True when a credential keyed ``credential_host`` belongs to ``registry`` (host[:port]).

    Ports must be equal (none on both, or the same); hosts compare label by
    label with globs (``*.example.com``), as the kubelet matches them; Docker
    Hub's aliases count as one registry.
    """
    key_host, key_port = _split_host(credential_host)
    host, port = _split_host(registry)
    if key_port != port:
        return False
    if key_host in DOCKER_HUB_ALIASES and host in DOCKER_HUB_ALIASES:
        return True
    if key_host.startswith("[") or host.startswith("["):
        return key_host == host  # IPv6 literals: no globs
    key_labels = key_host.split(".")
    labels = host.split(".")
    if len(key_labels) != len(labels):
        return False
    return all(
        fnmatch.fnmatchcase(label, glob) for glob, label in zip(key_labels, labels, strict=True)
    )


def is_loopback(registry: str) -> bool:
    """True for ``localhost`` and loopback addresses (plain http allowed, as Docker does)."""
    host, _ = _split_host(registry)
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> _Origin:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, (parts.hostname or "").lower(), port)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str  # the URL that answered, after redirects


class _AttemptError(Exception):
    """One candidate's attempt ended without a digest; its answer becomes a ``Refusal``."""

    def __init__(
        self,
        kind: AnswerKind,
        detail: str,
        *,
        status: int | None = None,
        delay: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind: AnswerKind = kind
        self.detail = detail
        self.status = status
        self.delay = delay


@dataclasses.dataclass
class _Endpoint:
    base: str  # "https://host:port" the registry answered on
    challenge: Challenge | None  # None: GET /v2/ answered 200 without credentials


def _error_summary(body: bytes) -> str:
    """The registry's own error code and message (distribution's JSON errors), if any."""
    try:
        document = json.loads(body[:65536])
        first = document["errors"][0]
        code = str(first.get("code", ""))[:60]
        message = str(first.get("message", ""))[:200]
        return f"{code}: {message}" if code else message
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""


def _secrets_of(credential: credentials.Credential | None) -> list[str]:
    if credential is None:
        return []
    values = [credential.password, credential.token]
    if credential.password:
        pair = f"{credential.username}:{credential.password}".encode()
        values.append(base64.b64encode(pair).decode())
        values.append(base64.b64encode(pair).decode().rstrip("="))
    return [v for v in values if len(v) >= 3]


def scrub(text: str, credential: credentials.Credential | None) -> str:
    """``text`` with every secret of ``credential`` replaced by ``***`` (a safety net)."""
    for secret in _secrets_of(credential):
        text = text.replace(secret, "***")
    return text


def _retry_after(headers: Mapping[str, str], now: float) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


# ------------------------------------------------------------------ client


class Client:
    """Talks to OCI registries for one process; reuse it (connections, pings and tokens cached).

    Thread-safe. ``settings`` gives timeouts, the CA bundle, the insecure
    registries and whether an anonymous pull is tried after the candidates.
    ``sleep`` and ``clock`` are there for tests (retry waits, token expiry);
    ``max_attempts`` bounds tries per request on 429/5xx and connection
    errors; a ``Retry-After`` longer than ``max_retry_wait`` seconds ends
    the retries at once (the caller retries later with that delay).
    """

    def __init__(
        self,
        *,
        settings: config.ScanSettings,
        max_attempts: int = 3,
        max_retry_wait: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if max_attempts < 1:
            raise errors.ConfigError("registry client: max_attempts must be at least 1")
        self.settings = settings
        self._max_attempts = max_attempts
        self._max_retry_wait = max_retry_wait
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._insecure = frozenset(h.lower() for h in settings.insecure_registries)
        timeout = settings.registry_timeout_seconds
        self._http = urllib3.PoolManager(
            num_pools=20,
            maxsize=4,
            retries=False,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            cert_reqs=ssl.CERT_REQUIRED,
            ca_certs=settings.registry_ca_bundle or None,
        )
        self._lock = threading.Lock()
        self._endpoints: dict[str, tuple[_Endpoint, float]] = {}  # registry -> (it, expiry)
        self._tokens: dict[tuple[str, str, credentials.Credential | None], tuple[str, float]] = {}
        self._tokens_fetched = 0  # grows with every token fetched from a realm

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections and forget cached tokens."""
        self._http.clear()
        with self._lock:
            self._tokens.clear()
            self._endpoints.clear()

    def __repr__(self) -> str:
        return f"registry.Client(insecure={sorted(self._insecure)}, tokens={len(self._tokens)})"

    # ---------------------------------------------------------- public API

    def resolve(
        self,
        image: images.Reference,
        candidates: Sequence[credentials.Credential],
    ) -> Resolution:
        """Find the first candidate the registry accepts for ``image``, and its digest.

        Candidates are tried one at a time, in order, then anonymous when
        ``settings.allow_anonymous``. Returns a ``Resolution``. Raises
        ``NoCredentialAccepted`` (permanent) when every candidate got a definite
        answer (401, 403, 404, bad challenge, not sent), and
        ``RegistryUnavailable`` (temporary) when none was accepted and at least
        one could not be asked (unreachable, timeout, 429/5xx).
        """
        attempts: list[credentials.Credential | None] = list(candidates)
        if self.settings.allow_anonymous:
            attempts.append(None)
        return self._resolve(image, attempts)

    def digest(self, image: images.Reference, *, credential: credentials.Credential | None) -> str:
        """The digest ``image`` names, asked with exactly ``credential`` (None: anonymous).

        Raises ``NoCredentialAccepted`` or ``RegistryUnavailable`` with the one answer.
        """
        return self._resolve(image, [credential]).digest

    def pull_token(self, image: images.Reference, credential: credentials.Credential) -> str:
        """A short-lived bearer token that may pull ``image``, obtained with ``credential``.

        For identity tokens (an OAuth2 refresh token, e.g. from ``az acr login``):
        Trivy, like ``docker pull``, takes a registry bearer token
        (``TRIVY_REGISTRY_TOKEN``), not a refresh token, so the farm exchanges it
        at the realm the registry names and a scan Job gets only the access token.
        Raises ``NoCredentialAccepted`` (refused, or the registry does not use
        bearer tokens) or ``RegistryUnavailable``; never a secret in a message.
        """
        try:
            if not credential_belongs_to(credential.host, image.registry):
                raise _AttemptError(
                    "not-sent",
                    f"credential belongs to {credential.host}, not {image.registry}; it is "
                    "never sent to another registry",
                )
            endpoint = self._endpoint(image.registry)
            if endpoint.challenge is None or endpoint.challenge.scheme != "bearer":
                raise _AttemptError(
                    "not-sent",
                    f"{image.registry} does not use bearer tokens: an identity token cannot "
                    "be exchanged there",
                )
            return self._token(
                endpoint.challenge, image, credential, _Origin.of(endpoint.base), fresh=True
            )
        except _AttemptError as failure:
            refusal = Refusal(
                source=credential.source,
                registry=credential.registry,
                username=credential.username,
                kind=failure.kind,
                status=failure.status,
                detail=scrub(failure.detail, credential),
                retry_after=failure.delay,
            )
            if refusal.temporary:
                raise RegistryUnavailable(image, [refusal], delay=failure.delay) from None
            raise NoCredentialAccepted(
                image, [refusal], "The identity token was not exchanged for a pull token"
            ) from None

    def _resolve(
        self, image: images.Reference, attempts: Sequence[credentials.Credential | None]
    ) -> Resolution:
        refusals: list[Refusal] = []
        # a failed ping is the registry's answer to every candidate: ask it once per call
        failed_pings: dict[str, _AttemptError] = {}
        for credential in attempts:
            try:
                digest = self._try(image, credential, failed_pings)
            except _AttemptError as failure:
                refusal = Refusal(
                    source=credential.source if credential else "anonymous",
                    registry=credential.registry if credential else "",
                    username=credential.username if credential else "",
                    kind=failure.kind,
                    status=failure.status,
                    detail=scrub(failure.detail, credential),
                    retry_after=failure.delay,
                )
                logger.info("registry refused a candidate for %s: %s", image, refusal)
                refusals.append(refusal)
                continue
            logger.info(
                "registry accepted %s for %s: %s",
                f"{credential.source} (user {credential.username!r})"
                if credential
                else "anonymous",
                image,
                digest,
            )
            return Resolution(image, digest, credential, tuple(refusals))
        temporary = [r for r in refusals if r.temporary]
        if temporary:
            delays = [r.retry_after for r in temporary if r.retry_after is not None]
            raise RegistryUnavailable(image, refusals, delay=max(delays) if delays else None)
        hint = (
            "Check the pull secrets' usernames and passwords, that the repository and tag exist, "
            "and that the credentials may pull it"
            if attempts
            else "No pull secret matches this registry and anonymous pulls are not allowed "
            "(scan.allow_anonymous)"
        )
        raise NoCredentialAccepted(image, refusals, hint)

    # ---------------------------------------------------------- one attempt

    def _try(
        self,
        image: images.Reference,
        credential: credentials.Credential | None,
        failed_pings: dict[str, _AttemptError],
    ) -> str:
        registry = image.registry
        if credential is not None and not credential_belongs_to(credential.host, registry):
            raise _AttemptError(
                "not-sent",
                f"credential belongs to {credential.host}, not {registry}; it is never sent "
                "to another registry",
            )
        failed = failed_pings.get(registry)
        if failed is not None:
            raise _AttemptError(
                failed.kind, failed.detail, status=failed.status, delay=failed.delay
            )
        try:
            endpoint = self._endpoint(registry)
        except _AttemptError as failure:
            failed_pings[registry] = failure
            raise
        api_host = _Origin.of(endpoint.base)
        repository = image.repository
        reference = image.digest or image.tag or "latest"
        url = f"{endpoint.base}/v2/{repository}/manifests/{urllib.parse.quote(reference, safe=':')}"
        challenge = endpoint.challenge
        tokens_fetched = self._tokens_fetched
        authorization = self._authorization(challenge, image, credential, api_host)
        response = self._manifest("HEAD", url, authorization, api_host, credential)
        if (
            response.status == 401
            and challenge is not None
            and challenge.scheme == "bearer"
            and self._tokens_fetched == tokens_fetched
            and not (credential is not None and _is_registry_token(credential))
        ):
            # the token came from the cache and is no longer taken (revoked, restarted
            # registry, clock skew): fetch a new one, once
            authorization = self._authorization(challenge, image, credential, api_host, fresh=True)
            response = self._manifest("HEAD", url, authorization, api_host, credential)
        if response.status == 401 and authorization is None and challenge is None:
            # /v2/ was open but the repository is not: authenticate with its challenge
            challenge = self._challenge_of(response)
            authorization = self._authorization(challenge, image, credential, api_host)
            if authorization is not None:
                response = self._manifest("HEAD", url, authorization, api_host, credential)
        if response.status in (405, 501) or (
            response.status == 200 and "docker-content-digest" not in response.headers
        ):
            response = self._manifest("GET", url, authorization, api_host, credential)
        return self._digest_of(response, image, credential)

    def _manifest(
        self,
        method: str,
        url: str,
        authorization: str | None,
        api_host: _Origin,
        credential: credentials.Credential | None,
    ) -> _Response:
        headers = {"Accept": MANIFEST_ACCEPT}
        return self._request(
            method,
            url,
            headers=headers,
            authorization=authorization,
            auth_origin=api_host,
            credential=credential,
        )

    def _digest_of(
        self,
        response: _Response,
        image: images.Reference,
        credential: credentials.Credential | None,
    ) -> str:
        status = response.status
        summary = scrub(_error_summary(response.body), credential)
        said = f" ({summary})" if summary else ""
        if status == 200:
            header = response.headers.get("docker-content-digest", "").strip()
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if not header and kind and "json" not in kind and "prettyjws" not in kind:
                # a web page (a proxy's error page, a captive portal, a UI on the wrong port)
                # would otherwise be hashed into a made-up digest
                raise _AttemptError(
                    "error",
                    f"registry answered 200 with {kind[:60]}, not an image manifest; "
                    "is this host an OCI registry (check the image's registry name and port)?",
                    status=200,
                )
            if response.body:
                computed = "sha256:" + hashlib.sha256(response.body).hexdigest()
                if header and header.startswith("sha256:") and header != computed:
                    raise _AttemptError(
                        "error",
                        f"registry sent a manifest whose sha256 {computed} is not the "
                        f"Docker-Content-Digest {header} it claimed",
                        status=200,
                    )
                digest = header if header else computed
            else:
                digest = header
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                raise _AttemptError(
                    "error", "registry answered 200 without a sha256 digest", status=200
                )
            if image.digest and image.digest != digest:
                raise _AttemptError(
                    "error",
                    f"registry returned digest {digest} for the pinned {image.digest}",
                    status=200,
                )
            return digest
        if status == 401:
            detail = summary or "authentication required"
            challenge_header = response.headers.get("www-authenticate", "")
            if 'error="insufficient_scope"' in challenge_header:
                detail = f"token has no pull access to {image.repository}{said}"
            who = "anonymous pull refused" if credential is None else "credential refused"
            raise _AttemptError("unauthorized", f"401 {who}: {detail}", status=401)
        if status == 403:
            raise _AttemptError(
                "forbidden", f"403 forbidden: may not pull {image.repository}{said}", status=403
            )
        if status == 404:
            raise _AttemptError(
                "not-found",
                f"404 not found: {image.repository}:{image.digest or image.tag or 'latest'} "
                f"does not exist (or this credential cannot see it){said}",
                status=404,
            )
        raise _AttemptError("error", f"unexpected {status} for the manifest{said}", status=status)

    # ------------------------------------------------------------- endpoint

    def _schemes(self, registry: str) -> list[str]:
        host, _ = _split_host(registry)
        if registry.lower() in self._insecure or host in self._insecure:
            return ["http"]
        if is_loopback(registry):
            return ["https", "http"]
        return ["https"]

    def _endpoint(self, registry: str) -> _Endpoint:
        """Ping ``/v2/`` without credentials; remember the scheme and the challenge."""
        now = self._clock()
        with self._lock:
            cached = self._endpoints.get(registry)
        if cached is not None and cached[1] > now:
            return cached[0]
        api = DOCKER_HUB_API if registry in DOCKER_HUB_ALIASES else registry
        schemes = self._schemes(registry)
        last: _AttemptError | None = None
        for scheme in schemes:
            base = f"{scheme}://{api}"
            try:
                response = self._request(
                    "GET",
                    f"{base}/v2/",
                    headers={},
                    authorization=None,
                    auth_origin=_Origin.of(base),
                    credential=None,
                )
            except _AttemptError as failure:
                # a loopback registry without TLS: fall back to http, as Docker does
                if failure.kind == "tls" and "not speaking TLS" in failure.detail:
                    last = failure
                    continue
                raise
            if response.status == 200:
                endpoint = _Endpoint(base, None)
            elif response.status == 401:
                endpoint = _Endpoint(base, self._challenge_of(response))
            elif response.status == 404:
                raise _AttemptError(
                    "error",
                    f"{base}/v2/ answered 404: {registry} is not an OCI distribution registry",
                    status=404,
                )
            else:
                raise _AttemptError(
                    "error",
                    f"{base}/v2/ answered {response.status}; expected 200 or 401",
                    status=response.status,
                )
            with self._lock:
                self._endpoints[registry] = (endpoint, now + _ENDPOINT_TTL_SECONDS)
            return endpoint
        assert last is not None
        raise last

    def _challenge_of(self, response: _Response) -> Challenge:
        header = response.headers.get("www-authenticate", "")
        if not header.strip():
            raise _AttemptError(
                "bad-challenge",
                f"{response.url} answered 401 without a WWW-Authenticate challenge",
                status=401,
            )
        try:
            return parse_challenge(header)
        except ChallengeError as e:
            raise _AttemptError(
                "bad-challenge",
                f"malformed WWW-Authenticate challenge from {response.url}: {e}",
                status=401,
            ) from None

    # ---------------------------------------------------------------- auth

    def _authorization(
        self,
        challenge: Challenge | None,
        image: images.Reference,
        credential: credentials.Credential | None,
        api_host: _Origin,
        *,
        fresh: bool = False,
    ) -> str | None:
        """The Authorization value for one attempt; ``fresh`` skips the token cache."""
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            if credential is None:
                return None
            if not credential.password and credential.token:
                raise _AttemptError(
                    "not-sent",
                    "credential holds only a token, which a Basic-auth registry cannot take",
                )
            pair = f"{credential.username}:{credential.password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        if credential is not None and _is_registry_token(credential):
            # a registry token is a bearer token for the registry itself (Docker's registrytoken)
            return "Bearer " + credential.token
        return "Bearer " + self._token(challenge, image, credential, api_host, fresh=fresh)

    def _token(
        self,
        challenge: Challenge,
        image: images.Reference,
        credential: credentials.Credential | None,
        api_host: _Origin,
        *,
        fresh: bool = False,
    ) -> str:
        realm = challenge.params["realm"]
        realm_origin = _Origin.of(realm)
        if realm_origin.scheme == "http" and not self._plain_http_allowed(realm_origin):
            raise _AttemptError(
                "not-sent",
                f"token realm {realm} is plain http and {realm_origin.netloc} is neither "
                "loopback nor listed in scan.insecure_registries",
            )
        scope = f"repository:{image.repository}:pull"
        key = (api_host.netloc, scope, credential)
        now = self._clock()
        with self._lock:
            cached = self._tokens.get(key)
        if cached is not None and cached[1] > now and not fresh:
            return cached[0]
        service = challenge.params.get("service", "")
        if credential is not None and credential.token and not credential.password:
            response = self._refresh_token(realm, service, scope, credential, realm_origin)
        else:
            query = [("scope", scope)]
            if service:
                query.insert(0, ("service", service))
            separator = "&" if urllib.parse.urlsplit(realm).query else "?"
            url = realm + separator + urllib.parse.urlencode(query)
            authorization = None
            if credential is not None:
                pair = f"{credential.username}:{credential.password}".encode()
                authorization = "Basic " + base64.b64encode(pair).decode()
            response = self._request(
                "GET",
                url,
                headers={},
                authorization=authorization,
                auth_origin=realm_origin,
                credential=credential,
            )
        if response.status in (401, 403):
            summary = scrub(_error_summary(response.body), credential)
            who = "anonymous token refused" if credential is None else "credential refused"
            kind: AnswerKind = "unauthorized" if response.status == 401 else "forbidden"
            raise _AttemptError(
                kind,
                f"{response.status} {who} by token realm {realm_origin.netloc}"
                + (f" ({summary})" if summary else ""),
                status=response.status,
            )
        if response.status != 200:
            raise _AttemptError(
                "error",
                f"token realm {realm_origin.netloc} answered {response.status}",
                status=response.status,
            )
        try:
            document = json.loads(response.body)
            token = document.get("token") or document.get("access_token")
            expires_in = int(document.get("expires_in") or _TOKEN_DEFAULT_SECONDS)
        except (ValueError, AttributeError, TypeError):
            token = None
            expires_in = 0
        if not isinstance(token, str) or not token:
            raise _AttemptError(
                "error", f"token realm {realm_origin.netloc} sent no token", status=200
            )
        expires_at = now + max(expires_in, _TOKEN_DEFAULT_SECONDS) - _TOKEN_MARGIN_SECONDS
        with self._lock:
            self._tokens[key] = (token, expires_at)
            self._tokens_fetched += 1
        return token

    def _refresh_token(
        self,
        realm: str,
        service: str,
        scope: str,
        credential: credentials.Credential,
        realm_origin: _Origin,
    ) -> _Response:
        """OAuth2 refresh-token grant with the ``identitytoken`` (Docker's ``postToken``)."""
        form = urllib.parse.urlencode(
            {
                "grant_type": "refresh_token",
                "refresh_token": credential.token,
                "service": service,
                "scope": scope,
                "client_id": "scanqueue",
            }
        ).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        response = self._request(
            "POST",
            realm,
            headers=headers,
            authorization=None,
            auth_origin=realm_origin,
            credential=credential,
            body=form,
        )
        if response.status in (404, 405):
            raise _AttemptError(
                "not-sent",
                f"token realm {realm_origin.netloc} does not take identity tokens "
                f"(POST answered {response.status}); use a username and password",
                status=response.status,
            )
        return response

    def _plain_http_allowed(self, origin: _Origin) -> bool:
        return (
            is_loopback(origin.host)
            or origin.netloc in self._insecure
            or origin.host in self._insecure
        )

    # ----------------------------------------------------------------- HTTP

    def _request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        authorization: str | None,
        auth_origin: _Origin,
        credential: credentials.Credential | None,
        body: bytes | None = None,
    ) -> _Response:
        """One request with bounded retries; ``authorization`` goes only to ``auth_origin``."""
        for attempt in range(1, self._max_attempts + 1):
            try:
                response = self._follow(
                    method,
                    url,
                    headers=headers,
                    authorization=authorization,
                    auth_origin=auth_origin,
                    body=body,
                )
            except _AttemptError as failure:
                if failure.kind != "unreachable" or attempt == self._max_attempts:
                    failure.detail = scrub(failure.detail, credential)
                    raise
                wait = 0.5 * 2 ** (attempt - 1)
                logger.debug("retrying %s %s in %.1fs: %s", method, _loggable(url), wait, failure)
                self._sleep(wait)
                continue
            if response.status not in _RETRY_STATUSES:
                return response
            delay = _retry_after(response.headers, self._wall_clock())
            origin = _Origin.of(response.url).netloc
            detail = f"{origin} answered {response.status}"
            if delay is not None:
                detail += f" (Retry-After {delay:.0f}s)"
            if attempt == self._max_attempts or (
                delay is not None and delay > self._max_retry_wait
            ):
                raise _AttemptError("unreachable", detail, status=response.status, delay=delay)
            wait = delay if delay is not None else 0.5 * 2 ** (attempt - 1)
            logger.debug("retrying %s %s in %.1fs: %s", method, _loggable(url), wait, detail)
            self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _follow(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        authorization: str | None,
        auth_origin: _Origin,
        body: bytes | None,
    ) -> _Response:
        """Send, following redirects by hand: the Authorization header never leaves its origin."""
        for _ in range(_MAX_REDIRECTS + 1):
            origin = _Origin.of(url)
            if origin.scheme == "http" and not self._plain_http_allowed(origin):
                raise _AttemptError(
                    "not-sent",
                    f"refusing plain http to {origin.netloc}: not loopback and not in "
                    "scan.insecure_registries",
                )
            if origin.scheme not in ("http", "https"):
                raise _AttemptError("error", f"refusing a {origin.scheme!r} URL")
            send = {"User-Agent": _USER_AGENT, **headers}
            if authorization is not None and origin == auth_origin:
                send["Authorization"] = authorization
            response = self._send(method, url, send, body)
            if response.status in (301, 302, 303, 307, 308):
                location = response.headers.get("location", "")
                if not location:
                    raise _AttemptError("error", f"{origin.netloc} redirected without a Location")
                url = urllib.parse.urljoin(url, location)
                if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                    method, body = "GET", None
                if body is not None and _Origin.of(url) != auth_origin:
                    # a 307/308 keeps the body, which holds a credential (the refresh-token
                    # grant): like Authorization, it never leaves its origin
                    raise _AttemptError(
                        "not-sent",
                        f"{origin.netloc} redirected a token request to "
                        f"{_Origin.of(url).netloc}; its body holds a credential and is "
                        "not sent to another origin",
                    )
                logger.debug("redirected to %s", _loggable(url))
                continue
            return response
        raise _AttemptError("error", f"more than {_MAX_REDIRECTS} redirects from {_loggable(url)}")

    def _send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> _Response:
        origin = _Origin.of(url)
        try:
            raw = self._http.request(
                method,
                url,
                headers=dict(headers),
                body=body,
                redirect=False,
                retries=False,
                preload_content=False,
            )
        except urllib3.exceptions.SSLError as e:
            raise _AttemptError("tls", _tls_detail(origin, e)) from None
        except urllib3.exceptions.NewConnectionError as e:  # before its base class
            reason = _connection_reason(e)
            raise _AttemptError(
                "unreachable", f"cannot connect to {origin.netloc}: {reason}"
            ) from None
        except urllib3.exceptions.ConnectTimeoutError:
            raise _AttemptError("unreachable", f"connecting to {origin.netloc} timed out") from None
        except urllib3.exceptions.ReadTimeoutError:
            raise _AttemptError("unreachable", f"{origin.netloc} did not answer in time") from None
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.HTTPError) as e:
            raise _AttemptError(
                "unreachable", f"connection to {origin.netloc} failed: {type(e).__name__}"
            ) from None
        try:
            data = b"" if method == "HEAD" else raw.read(_MAX_MANIFEST_BYTES + 1)
        except urllib3.exceptions.HTTPError as e:
            raise _AttemptError(
                "unreachable", f"reading from {origin.netloc} failed: {type(e).__name__}"
            ) from None
        finally:
            raw.release_conn()
        if len(data) > _MAX_MANIFEST_BYTES:
            raise _AttemptError(
                "error", f"{origin.netloc} sent more than {_MAX_MANIFEST_BYTES} bytes"
            )
        response_headers = {k.lower(): v for k, v in raw.headers.items()}
        logger.debug("%s %s -> %d", method, _loggable(url), raw.status)
        return _Response(raw.status, response_headers, data, url)

    def cached_tokens(self) -> Iterator[tuple[str, str, str]]:
        """(registry, scope, credential source) of every cached token (never the token)."""
        with self._lock:
            keys = list(self._tokens)
        for host, scope, credential in keys:
            yield host, scope, credential.source if credential else "anonymous"


def _is_registry_token(credential: credentials.Credential) -> bool:
    """A ``registrytoken``: a bearer token for the registry itself, not for a token realm."""
    return bool(credential.token) and getattr(credential, "token_kind", "") == "registrytoken"


def _loggable(url: str) -> str:
    """A URL for logs: scheme, host and path only (a query could carry anything)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _connection_reason(error: Exception) -> str:
    text = str(error).lower()
    for needle, reason in (
        ("refused", "connection refused"),
        ("name or service not known", "unknown host"),
        ("nodename nor servname", "unknown host"),
        ("temporary failure in name resolution", "name resolution failed"),
        ("no route", "no route to host"),
        ("unreachable", "network unreachable"),
    ):
        if needle in text:
            return reason
    return type(error).__name__


def _tls_detail(origin: _Origin, error: Exception) -> str:
    text = str(error)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return (
            f"TLS verification of {origin.netloc} failed (certificate not trusted); "
            "set scan.registry_ca_bundle to its CA, or list it in scan.insecure_registries"
        )
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text or "record layer" in text:
        return f"{origin.netloc} is not speaking TLS"
    return f"TLS handshake with {origin.netloc} failed"
