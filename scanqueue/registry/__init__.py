"""The registry client: which credential a registry accepts, and what digest a tag names.

A package so that each rule lives in one small module (issue 19):

- ``urls``: the one URL parser; origins are decided on exactly what the
  connection uses, and ambiguous ``Location`` values are refused;
- ``transport``: urllib3, retries, and redirects that never carry a credential
  (header or refresh-token body) to another origin;
- ``auth``: challenges (only from the registry's own origin), token realms,
  the token cache;
- ``resolve``: ``Client.resolve``/``digest``/``pull_token``;
- ``answers``: results, refusals, errors and ``scrub``.

Callers import the package (``from scanqueue import registry``) and use the
names below; nothing outside it imports its modules.
"""

from __future__ import annotations

from scanqueue import errors
from scanqueue.registry.answers import (
    TEMPORARY_KINDS,
    AnswerKind,
    NoCredentialAccepted,
    Refusal,
    RegistryUnavailable,
    Resolution,
    scrub,
)
from scanqueue.registry.auth import Challenge, ChallengeError, parse_challenge
from scanqueue.registry.resolve import (
    DOCKER_HUB_ALIASES,
    DOCKER_HUB_API,
    MANIFEST_ACCEPT,
    Client,
)
from scanqueue.registry.urls import is_loopback

__all__ = [
    "DOCKER_HUB_ALIASES",
    "DOCKER_HUB_API",
    "MANIFEST_ACCEPT",
    "TEMPORARY_KINDS",
    "AnswerKind",
    "Challenge",
    "ChallengeError",
    "Client",
    "NoCredentialAccepted",
    "Refusal",
    "RegistryUnavailable",
    "Resolution",
    "errors",
    "is_loopback",
    "parse_challenge",
    "scrub",
]
