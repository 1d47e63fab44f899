"""Image references: parse, normalise, compare. Pure: no I/O.

scanqueue keys scans, credentials and reports on image references, so they
must be read exactly as the container runtime and the kubelet read them: the
grammar and normalisation of distribution/reference (``reference/regexp.go``,
``normalize.go``, ``reference.go``), which the kubelet uses through
``ParseNormalizedNamed`` before it looks up a pull credential.

This module must never do I/O, and never accept a reference the kubelet would
refuse: a bad reference raises ``InvalidReference`` naming it and the problem.
"""

from __future__ import annotations

import dataclasses
import re

from scanqueue import errors

#: Docker Hub, as ``normalize.go`` spells it (``defaultDomain``) and its legacy alias
#: (``legacyDefaultDomain``), which ``splitDockerDomain`` rewrites to it.
DOCKER_HUB = "docker.io"
DOCKER_HUB_LEGACY = "index.docker.io"
#: Single-part Docker Hub names live under ``library/`` (``officialRepoPrefix``).
OFFICIAL_REPO_PREFIX = "library/"
#: ``NameTotalLengthMax`` in reference.go.
NAME_TOTAL_LENGTH_MAX = 255
# name + ":" + 128-character tag + "@" + a long digest fits well within this; longer text is
# refused before it is quoted in full in an error message (and a scan row)
REFERENCE_LENGTH_MAX = 1024

# The grammar of distribution/reference regexp.go, piece by piece.
_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_NAME}|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$", re.ASCII)
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$", re.ASCII)
_TAG_RE = re.compile(rf"^{_TAG}$", re.ASCII)
_DIGEST_RE = re.compile(rf"^{_DIGEST}$", re.ASCII)
# anchoredIdentifierRegexp: a bare 64-hex string is an image ID, never a name.
_IDENTIFIER_RE = re.compile(r"^[a-f0-9]{64}$")
# go-digest's registered algorithms and the exact length of their lowercase hex.
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}


class InvalidReference(errors.PermanentError):
    """An image reference the kubelet would refuse; the message names it and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Reference:
    """A normalised image reference: ``registry/repository[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``: the kubelet looks credentials up by it (``Name()``)."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def with_digest(self, digest: str) -> Reference:
        """The same name pinned to ``digest`` (tag kept); raises ``InvalidReference`` if bad."""
        return dataclasses.replace(self, digest=_check_digest(digest, str(self)))

    @property
    def is_docker_hub(self) -> bool:
        """True for images on Docker Hub (``docker.io``, after normalisation)."""
        return self.registry == DOCKER_HUB


@dataclasses.dataclass(frozen=True)
class ImageID:
    """What ``status.containerStatuses[].imageID`` says: the digest, and the repository if named."""

    digest: str
    reference: Reference | None = None


def parse(text: str) -> Reference:
    """Parse ``name[:tag][@digest]`` as ``reference.ParseNormalizedNamed`` does.

    Returns the normalised reference (default registry ``docker.io``, ``library/``
    for single-part Docker Hub names, ``index.docker.io`` read as ``docker.io``).
    Raises ``InvalidReference`` naming the reference and what is wrong.
    """
    if not isinstance(text, str) or not text:
        raise InvalidReference(f"image reference {text!r} is empty")
    if len(text) > REFERENCE_LENGTH_MAX:
        raise InvalidReference(
            f"image reference {text[:80]!r}... is {len(text)} characters long; "
            f"no valid reference is longer than {REFERENCE_LENGTH_MAX}"
        )
    if text != text.strip():
        raise InvalidReference(f"image reference {text!r} has leading or trailing whitespace")
    # ParseNormalizedNamed: a bare image ID is refused, not read as a Docker Hub name.
    if _IDENTIFIER_RE.match(text):
        raise InvalidReference(
            f"image reference {text!r} is a 64-character hexadecimal image ID, not a name; "
            "write it as sha256:<hex> or repository@sha256:<hex>"
        )
    remainder, at, digest_text = text.partition("@")
    digest: str | None = None
    if at:
        digest = _check_digest(digest_text, text)
    # The tag follows the last ':' that is after the last '/' (a ':' before it is a port).
    name_text = remainder
    tag: str | None = None
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        name_text, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidReference(
                f"image reference {text!r} has an invalid tag {tag!r}: "
                "up to 128 characters of letters, digits, '_', '.' and '-', "
                "not starting with '.' or '-'"
            )
    registry, repository = _split_domain(name_text, text)
    if not _DOMAIN_RE.match(registry):
        raise InvalidReference(f"image reference {text!r} has an invalid registry {registry!r}")
    if not _PATH_RE.match(repository):
        what = "must be lowercase" if repository != repository.lower() else "is not valid"
        raise InvalidReference(
            f"image reference {text!r}: repository name {repository!r} {what} "
            "(lowercase letters, digits and single '.', '_', '__' or '-' separators "
            "between '/'-separated components)"
        )
    if len(registry) + 1 + len(repository) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(
            f"image reference {text!r} has a name longer than {NAME_TOTAL_LENGTH_MAX} characters"
        )
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)


def parse_image_id(text: str) -> ImageID:
    """Parse ``status.containerStatuses[].imageID`` in any form a runtime writes it.

    Accepts ``docker-pullable://repo@sha256:..``, ``docker://sha256:..``, bare
    ``sha256:..`` and ``repo@sha256:..`` (containerd, CRI-O). Returns the digest
    and, when the ID names one, the repository. Raises ``InvalidReference``.
    """
    if not isinstance(text, str) or not text:
        raise InvalidReference(f"image ID {text!r} is empty")
    body = text
    for scheme in ("docker-pullable://", "docker://"):
        if body.startswith(scheme):
            body = body[len(scheme) :]
            break
    if "@" not in body:
        if "/" in body:
            raise InvalidReference(
                f"image ID {text!r} names a repository but no digest; "
                "expected repository@sha256:<hex>"
            )
        return ImageID(digest=_check_digest(body, text), reference=None)
    try:
        reference = parse(body)
    except InvalidReference as e:
        raise InvalidReference(f"image ID {text!r} is not valid: {e}") from e
    digest = reference.digest or ""  # always set: body contains '@'
    return ImageID(digest=digest, reference=reference)


def _split_domain(name: str, text: str) -> tuple[str, str]:
    """``splitDockerDomain`` in normalize.go: which part of ``name`` is the registry.

    The first component is a registry only when it contains '.' or ':' or is
    ``localhost``; otherwise the whole name is a Docker Hub repository.
    """
    first, slash, rest = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        registry, repository = DOCKER_HUB, name
    else:
        registry, repository = first, rest
    if registry == DOCKER_HUB_LEGACY:
        registry = DOCKER_HUB
    if not repository:
        raise InvalidReference(f"image reference {text!r} has no repository name")
    if registry == DOCKER_HUB and "/" not in repository:
        repository = OFFICIAL_REPO_PREFIX + repository
    return registry, repository


def _check_digest(digest: str, text: str) -> str:
    """Return ``digest`` if it is ``algorithm:hex`` as go-digest accepts it, else raise."""
    if not _DIGEST_RE.match(digest):
        raise InvalidReference(
            f"image reference {text!r} has an invalid digest {digest!r}: "
            "expected algorithm:hex with at least 32 hexadecimal digits, e.g. sha256:<64 hex>"
        )
    algorithm, _, hex_part = digest.partition(":")
    expected = _DIGEST_HEX_LENGTH.get(algorithm)
    if expected is None:
        raise InvalidReference(
            f"image reference {text!r} uses unsupported digest algorithm {algorithm!r}; "
            "expected sha256, sha384 or sha512"
        )
    if len(hex_part) != expected or hex_part != hex_part.lower():
        raise InvalidReference(
            f"image reference {text!r} has an invalid {algorithm} digest: "
            f"expected {expected} lowercase hexadecimal digits"
        )
    return digest
