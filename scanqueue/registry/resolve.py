"""OCI distribution v2 client: which credential a registry accepts, and what digest a tag names.

A worker asks the registry before it spends a scan Job: the digest is the
dedupe key and pins the scan to exactly what runs, and the first accepted
candidate is the one credential the Job gets. Candidates are tried one at a
time, in the order given, never merged.

This module must never:

- try a credential the kubelet would not use for the image
  (``credentials.match``, Go's ``URLsMatch`` semantics, is the one matcher);
- send an ``Authorization`` header to any origin other than the registry the
  credential belongs to (host *and* port) or the token realm that registry
  named; ``transport`` enforces it on every redirect hop, and ``auth`` refuses a
  challenge that did not come from the registry's own origin;
- speak plain ``http://`` to a registry that is neither listed as insecure nor
  on loopback, or skip TLS verification;
- put a password, token or ``auth`` value in a log record, an exception
  message, a ``repr`` or a result (messages are scrubbed a second time as a
  safety net).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence

from scanqueue import config, credentials, errors, images
from scanqueue.registry import answers, auth, transport, urls

logger = logging.getLogger("scanqueue.registry")

#: Manifest media types a digest lookup accepts: OCI index and manifest, Docker list and v2.
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)

#: Docker Hub's names: the API of any of them is Docker Hub's.
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
DOCKER_HUB_API = "registry-1.docker.io"

_ENDPOINT_TTL_SECONDS = 300  # how long a registry's scheme and challenge are remembered


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    base: urls.Target  # "https://host:port/" the registry answered on
    challenge: auth.Challenge | None  # None: GET /v2/ answered 200 without credentials

    def url(self, path: str) -> urls.Target:
        return transport.target(self.base.url.rstrip("/") + path, what="registry")


def _not_for(credential: credentials.Credential, image: images.Reference) -> str | None:
    """Why the kubelet would not use ``credential`` for ``image``, or None when it would."""
    if credentials.match(image, [credential]):
        return None
    return (
        f"credential belongs to {credential.registry}, not {image.name}; it is never sent "
        "to another registry"
    )


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
        self._clock = clock
        self._http = transport.Transport(
            settings=settings,
            max_attempts=max_attempts,
            max_retry_wait=max_retry_wait,
            sleep=sleep,
            wall_clock=wall_clock,
        )
        self._tokens = auth.Tokens(http=self._http, clock=clock)
        self._lock = threading.Lock()
        self._endpoints: dict[str, tuple[_Endpoint, float]] = {}  # registry -> (it, expiry)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections and forget cached tokens."""
        self._http.clear()
        self._tokens.clear()
        with self._lock:
            self._endpoints.clear()

    def __repr__(self) -> str:
        return (
            f"registry.Client(insecure={sorted(self._http.insecure)}, tokens={len(self._tokens)})"
        )

    # ---------------------------------------------------------- public API

    def resolve(
        self,
        image: images.Reference,
        candidates: Sequence[credentials.Credential],
    ) -> answers.Resolution:
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
            refused = _not_for(credential, image)
            if refused is not None:
                raise answers.AttemptError("not-sent", refused)
            endpoint = self._endpoint(image.registry)
            if endpoint.challenge is None or endpoint.challenge.scheme != "bearer":
                raise answers.AttemptError(
                    "not-sent",
                    f"{image.registry} does not use bearer tokens: an identity token cannot "
                    "be exchanged there",
                )
            return self._tokens.token(
                endpoint.challenge, image, credential, endpoint.base.origin, fresh=True
            )
        except answers.AttemptError as failure:
            refusal = answers.Refusal(
                source=credential.source,
                registry=credential.registry,
                username=credential.username,
                kind=failure.kind,
                status=failure.status,
                detail=answers.scrub(failure.detail, credential),
                retry_after=failure.delay,
            )
            if refusal.temporary:
                raise answers.RegistryUnavailable(image, [refusal], delay=failure.delay) from None
            raise answers.NoCredentialAccepted(
                image, [refusal], "The identity token was not exchanged for a pull token"
            ) from None

    def _resolve(
        self, image: images.Reference, attempts: Sequence[credentials.Credential | None]
    ) -> answers.Resolution:
        refusals: list[answers.Refusal] = []
        # a failed ping is the registry's answer to every candidate: ask it once per call
        failed_pings: dict[str, answers.AttemptError] = {}
        for credential in attempts:
            try:
                digest = self._try(image, credential, failed_pings)
            except answers.AttemptError as failure:
                refusal = answers.Refusal(
                    source=credential.source if credential else "anonymous",
                    registry=credential.registry if credential else "",
                    username=credential.username if credential else "",
                    kind=failure.kind,
                    status=failure.status,
                    detail=answers.scrub(failure.detail, credential),
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
            return answers.Resolution(image, digest, credential, tuple(refusals))
        temporary = [r for r in refusals if r.temporary]
        if temporary:
            delays = [r.retry_after for r in temporary if r.retry_after is not None]
            raise answers.RegistryUnavailable(
                image, refusals, delay=max(delays) if delays else None
            )
        hint = (
            "Check the pull secrets' usernames and passwords, that the repository and tag exist, "
            "and that the credentials may pull it"
            if attempts
            else "No pull secret matches this registry and anonymous pulls are not allowed "
            "(scan.allow_anonymous)"
        )
        raise answers.NoCredentialAccepted(image, refusals, hint)

    # ---------------------------------------------------------- one attempt

    # ---------------------------------------------------------- one attempt

    def _try(
        self,
        image: images.Reference,
        credential: credentials.Credential | None,
        failed_pings: dict[str, answers.AttemptError],
    ) -> str:
        registry = image.registry
        if credential is not None:
            refused = _not_for(credential, image)
            if refused is not None:
                raise answers.AttemptError("not-sent", refused)
        failed = failed_pings.get(registry)
        if failed is not None:
            raise answers.AttemptError(
                failed.kind, failed.detail, status=failed.status, delay=failed.delay
            )
        try:
            endpoint = self._endpoint(registry)
        except answers.AttemptError as failure:
            failed_pings[registry] = failure
            raise
        home = endpoint.base.origin
        reference = image.digest or image.tag or "latest"
        url = endpoint.url(
            f"/v2/{image.repository}/manifests/{urllib.parse.quote(reference, safe=':')}"
        )
        challenge = endpoint.challenge
        tokens_fetched = self._tokens.fetched
        authorization = self._tokens.authorization(challenge, image, credential, home)
        response = self._manifest("HEAD", url, authorization, home, credential)
        if (
            response.status == 401
            and challenge is not None
            and challenge.scheme == "bearer"
            and self._tokens.fetched == tokens_fetched
            and not (credential is not None and auth.is_registry_token(credential))
        ):
            # the token came from the cache and is no longer taken (revoked, restarted
            # registry, clock skew): fetch a new one, once
            authorization = self._tokens.authorization(
                challenge, image, credential, home, fresh=True
            )
            response = self._manifest("HEAD", url, authorization, home, credential)
        if response.status == 401 and authorization is None and challenge is None:
            # /v2/ was open but the repository is not: authenticate with its challenge
            challenge = auth.challenge_of(response, home)
            authorization = self._tokens.authorization(challenge, image, credential, home)
            if authorization is not None:
                response = self._manifest("HEAD", url, authorization, home, credential)
        if response.status in (405, 501) or (
            response.status == 200 and "docker-content-digest" not in response.headers
        ):
            response = self._manifest("GET", url, authorization, home, credential)
        return self._digest_of(response, image, credential)

    def _manifest(
        self,
        method: str,
        url: urls.Target,
        authorization: str | None,
        home: urls.Origin,
        credential: credentials.Credential | None,
    ) -> answers.Response:
        response = self._http.request(
            method,
            url,
            headers={"Accept": MANIFEST_ACCEPT},
            authorization=authorization,
            auth_origin=home,
            credential=credential,
        )
        if response.status == 401 and response.origin != home:
            # a redirect target's challenge is not the registry's: refuse it (issue 19)
            auth.challenge_of(response, home)
        return response

    def _digest_of(
        self,
        response: answers.Response,
        image: images.Reference,
        credential: credentials.Credential | None,
    ) -> str:
        status = response.status
        summary = answers.scrub(answers.error_summary(response.body), credential)
        said = f" ({summary})" if summary else ""
        if status == 200:
            header = response.headers.get("docker-content-digest", "").strip()
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if not header and kind and "json" not in kind and "prettyjws" not in kind:
                # a web page (a proxy's error page, a captive portal, a UI on the wrong port)
                # would otherwise be hashed into a made-up digest
                raise answers.AttemptError(
                    "error",
                    f"registry answered 200 with {kind[:60]}, not an image manifest; "
                    "is this host an OCI registry (check the image's registry name and port)?",
                    status=200,
                )
            if response.body:
                computed = "sha256:" + hashlib.sha256(response.body).hexdigest()
                if header and header.startswith("sha256:") and header != computed:
                    raise answers.AttemptError(
                        "error",
                        f"registry sent a manifest whose sha256 {computed} is not the "
                        f"Docker-Content-Digest {header} it claimed",
                        status=200,
                    )
                digest = header if header else computed
            else:
                digest = header
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                raise answers.AttemptError(
                    "error", "registry answered 200 without a sha256 digest", status=200
                )
            if image.digest and image.digest != digest:
                raise answers.AttemptError(
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
            raise answers.AttemptError("unauthorized", f"401 {who}: {detail}", status=401)
        if status == 403:
            raise answers.AttemptError(
                "forbidden", f"403 forbidden: may not pull {image.repository}{said}", status=403
            )
        if status == 404:
            raise answers.AttemptError(
                "not-found",
                f"404 not found: {image.repository}:{image.digest or image.tag or 'latest'} "
                f"does not exist (or this credential cannot see it){said}",
                status=404,
            )
        raise answers.AttemptError(
            "error", f"unexpected {status} for the manifest{said}", status=status
        )

    # ------------------------------------------------------------- endpoint

    # ------------------------------------------------------------- endpoint

    def _schemes(self, registry: str) -> list[str]:
        host = registry.lower()
        name = host.rsplit(":", 1)[0] if ":" in host and not host.endswith("]") else host
        if host in self._http.insecure or name in self._http.insecure:
            return ["http"]
        if urls.is_loopback(registry):
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
        last: answers.AttemptError | None = None
        for scheme in self._schemes(registry):
            base = transport.target(f"{scheme}://{api}/", what="registry")
            ping = transport.target(f"{scheme}://{api}/v2/", what="registry")
            try:
                response = self._http.request(
                    "GET",
                    ping,
                    headers={},
                    authorization=None,
                    auth_origin=base.origin,
                    credential=None,
                )
            except answers.AttemptError as failure:
                # a loopback registry without TLS: fall back to http, as Docker does
                if failure.kind == "tls" and "not speaking TLS" in failure.detail:
                    last = failure
                    continue
                raise
            if response.status == 200:
                endpoint = _Endpoint(base, None)
            elif response.status == 401:
                endpoint = _Endpoint(base, auth.challenge_of(response, base.origin))
            elif response.status == 404:
                raise answers.AttemptError(
                    "error",
                    f"{ping.loggable} answered 404: {registry} is not an OCI distribution registry",
                    status=404,
                )
            else:
                raise answers.AttemptError(
                    "error",
                    f"{ping.loggable} answered {response.status}; expected 200 or 401",
                    status=response.status,
                )
            with self._lock:
                self._endpoints[registry] = (endpoint, now + _ENDPOINT_TTL_SECONDS)
            return endpoint
        assert last is not None
        raise last

    def cached_tokens(self) -> Iterator[tuple[str, str, str]]:
        """(registry, scope, credential source) of every cached token (never the token)."""
        for host, scope, credential in self._tokens.cache_keys():
            yield host, scope, credential.source if credential else "anonymous"
