"""Registry authentication: ``WWW-Authenticate`` challenges, the token realm, the token cache.

The credential a candidate stands for is turned into an ``Authorization``
value here: Basic for a Basic registry, a bearer token fetched from the realm
the registry's own challenge names (Docker and containerd do the same: a
registry may name its realm, and the credential chosen for that registry goes
there), or the ``registrytoken`` itself.

This module must never answer a challenge that did not come from the
registry's own origin (``challenge_of`` refuses it: issue 19), send a
credential to a plain-http realm off loopback, or keep a token beyond its
expiry; tokens are cached per (registry, scope, credential) and never logged.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

from scanqueue import credentials, images
from scanqueue.registry import answers, transport, urls

_TOKEN_DEFAULT_SECONDS = 60  # the token spec's default when expires_in is missing
_TOKEN_MARGIN_SECONDS = 10  # renew a cached token this long before it expires


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
        try:
            urls.parse(params.get("realm", ""))
        except urls.UnsafeURLError as e:
            raise ChallengeError(
                f"Bearer challenge without an absolute http(s) realm URL ({e})"
            ) from None
        return Challenge("bearer", params)
    return Challenge("basic", params)


def challenge_of(response: answers.Response, registry: urls.Origin) -> Challenge:
    """The challenge of a 401 that ``registry`` itself sent.

    Raises ``AttemptError`` ("bad-challenge") when the 401 came from another
    origin (a redirect target: its realm is never sent the registry's
    credential, as containerd asks for the host that sent the 401), or when
    the challenge is missing or malformed.
    """
    if response.origin != registry:
        raise answers.AttemptError(
            "bad-challenge",
            f"challenge from another origin: {response.origin.netloc} answered 401 after a "
            f"redirect from {registry.netloc}; the registry's credential is never sent "
            "there or to the realm it names",
            status=401,
        )
    header = response.headers.get("www-authenticate", "")
    if not header.strip():
        raise answers.AttemptError(
            "bad-challenge",
            f"{response.url} answered 401 without a WWW-Authenticate challenge",
            status=401,
        )
    try:
        return parse_challenge(header)
    except ChallengeError as e:
        raise answers.AttemptError(
            "bad-challenge",
            f"malformed WWW-Authenticate challenge from {response.url}: {e}",
            status=401,
        ) from None


def is_registry_token(credential: credentials.Credential) -> bool:
    """A ``registrytoken``: a bearer token for the registry itself, not for a token realm."""
    return bool(credential.token) and credential.token_kind == "registrytoken"


def basic(credential: credentials.Credential) -> str:
    """The ``Authorization`` value of HTTP Basic for ``credential``."""
    pair = f"{credential.username}:{credential.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


TokenKey = tuple[str, str, credentials.Credential | None]  # (registry netloc, scope, credential)


class Tokens:
    """Authorization values for one client: bearer tokens fetched from realms, cached.

    Thread-safe. ``fetched`` grows with every token fetched from a realm (a
    caller compares it to know whether a token came from the cache).
    """

    def __init__(
        self, *, http: transport.Transport, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._http = http
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[TokenKey, tuple[str, float]] = {}
        self.fetched = 0

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Forget every cached token."""
        with self._lock:
            self._cache.clear()

    def cache_keys(self) -> Iterator[TokenKey]:
        """The cache keys (never a token)."""
        with self._lock:
            keys = list(self._cache)
        yield from keys

    def authorization(
        self,
        challenge: Challenge | None,
        image: images.Reference,
        credential: credentials.Credential | None,
        registry: urls.Origin,
        *,
        fresh: bool = False,
    ) -> str | None:
        """The Authorization value for one attempt at ``registry`` (whose own challenge
        ``challenge`` is); ``fresh`` skips the token cache. Raises ``AttemptError``."""
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            if credential is None:
                return None
            if not credential.password and credential.token:
                raise answers.AttemptError(
                    "not-sent",
                    "credential holds only a token, which a Basic-auth registry cannot take",
                )
            return basic(credential)
        if credential is not None and is_registry_token(credential):
            # a registry token is a bearer token for the registry itself (Docker's registrytoken)
            return "Bearer " + credential.token
        return "Bearer " + self.token(challenge, image, credential, registry, fresh=fresh)

    def token(
        self,
        challenge: Challenge,
        image: images.Reference,
        credential: credentials.Credential | None,
        registry: urls.Origin,
        *,
        fresh: bool = False,
    ) -> str:
        """A pull token for ``image`` from the realm of ``registry``'s bearer challenge."""
        realm = transport.target(challenge.params["realm"], what="token realm")
        realm_origin = realm.origin
        if realm_origin.scheme == "http" and not self._http.plain_http_allowed(realm_origin):
            raise answers.AttemptError(
                "not-sent",
                f"token realm {realm.loggable} is plain http and {realm_origin.netloc} is "
                "neither loopback nor listed in scan.insecure_registries",
            )
        scope = f"repository:{image.repository}:pull"
        key = (registry.netloc, scope, credential)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached[1] > now and not fresh:
            return cached[0]
        service = challenge.params.get("service", "")
        if credential is not None and credential.token and not credential.password:
            response = self._refresh_token(realm, service, scope, credential)
        else:
            query = [("scope", scope)]
            if service:
                query.insert(0, ("service", service))
            separator = "&" if "?" in realm.request_uri else "?"
            url = transport.target(
                realm.url + separator + urllib.parse.urlencode(query), what="token realm"
            )
            response = self._http.request(
                "GET",
                url,
                headers={},
                authorization=basic(credential) if credential is not None else None,
                auth_origin=url.origin,
                credential=credential,
            )
        token, expires_in = _token_of(response, credential, realm_origin)
        expires_at = now + max(expires_in, _TOKEN_DEFAULT_SECONDS) - _TOKEN_MARGIN_SECONDS
        with self._lock:
            self._cache[key] = (token, expires_at)
            self.fetched += 1
        return token

    def _refresh_token(
        self,
        realm: urls.Target,
        service: str,
        scope: str,
        credential: credentials.Credential,
    ) -> answers.Response:
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
        response = self._http.request(
            "POST",
            realm,
            headers=headers,
            authorization=None,
            auth_origin=realm.origin,
            credential=credential,
            body=form,
        )
        if response.status in (404, 405):
            raise answers.AttemptError(
                "not-sent",
                f"token realm {realm.origin.netloc} does not take identity tokens "
                f"(POST answered {response.status}); use a username and password",
                status=response.status,
            )
        return response


def _token_of(
    response: answers.Response,
    credential: credentials.Credential | None,
    realm: urls.Origin,
) -> tuple[str, int]:
    """(token, expires_in seconds) from a realm's answer; raises ``AttemptError``."""
    if response.status in (401, 403):
        summary = answers.scrub(answers.error_summary(response.body), credential)
        who = "anonymous token refused" if credential is None else "credential refused"
        kind: answers.AnswerKind = "unauthorized" if response.status == 401 else "forbidden"
        raise answers.AttemptError(
            kind,
            f"{response.status} {who} by token realm {realm.netloc}"
            + (f" ({summary})" if summary else ""),
            status=response.status,
        )
    if response.status != 200:
        raise answers.AttemptError(
            "error",
            f"token realm {realm.netloc} answered {response.status}",
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
        raise answers.AttemptError("error", f"token realm {realm.netloc} sent no token", status=200)
    return token, expires_in
