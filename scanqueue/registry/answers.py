"""What a registry answered: results, refusals and the two errors a caller sees, never a secret.

``Refusal`` is one candidate's answer, ``Resolution`` the accepted one;
``NoCredentialAccepted`` (permanent) and ``RegistryUnavailable`` (temporary)
end a resolve. ``AttemptError`` is the client's internal way to end one
candidate's attempt; ``scrub`` is the safety net that removes a credential's
secrets from any text before it leaves the client.

This module must never do I/O, and never hold or print a password, token or
``auth`` value in anything it builds (``scrub`` is the last line, not the first).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from scanqueue import credentials, errors, images
from scanqueue.registry import urls

AnswerKind = Literal[
    "unauthorized",  # 401: the registry (or its token realm) refused the credential
    "forbidden",  # 403: authenticated, but not allowed to pull this repository
    "not-found",  # 404: no such repository or tag (as far as this credential can see)
    "unreachable",  # connection failed, timed out, or 429/5xx after the bounded retries
    "bad-challenge",  # challenge missing, malformed, or from another origin than the registry
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
class Response:
    """One HTTP answer, read in full (bounded), and the URL that gave it after redirects."""

    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    url: str  # the URL that answered, for messages (no query: see urls.Target.loggable)
    origin: urls.Origin  # the server that answered (after redirects)


class AttemptError(Exception):
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


def error_summary(body: bytes) -> str:
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
