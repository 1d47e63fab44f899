"""Pull secrets and the kubelet's choice of credential for an image. Pure: no I/O.

scanqueue scans private images with the credential the cluster itself would
use, so this module reproduces the kubelet rule for rule (Kubernetes
``pkg/credentialprovider``):

- ``secrets.go`` ``MakeDockerKeyring``: only ``kubernetes.io/dockerconfigjson``
  (``.dockerconfigjson``, ``{"auths": {...}}``) and ``kubernetes.io/dockercfg``
  (``.dockercfg``, no wrapper) secrets count; every pull secret of the pod goes
  into ONE keyring.
- ``config.go`` ``DockerConfigEntry.UnmarshalJSON``: ``username``, ``password``,
  ``email``; a non-empty ``auth`` (base64 of ``user:pass``, padded or not) wins.
- ``keyring.go`` ``BasicDockerKeyring.Add``: a key gets ``https://`` when it has no
  scheme, loses a leading ``/v1/`` or ``/v2/``, and becomes ``host[:port][/path]``.
- ``keyring.go`` ``Lookup``/``URLsMatch``: keys reverse-sorted; a key matches when
  the port is equal, the host has as many ``.``-labels, each label matches as a
  ``filepath.Match`` glob, and the key's path is a string prefix of the image's;
  only when nothing matched, Docker Hub images fall back to ``index.docker.io``.

Every ``Credential`` holds exactly one registry's credential; nothing is ever
merged. This module must never do I/O, and a password, token or ``auth`` value
must never reach a ``repr``, ``str``, log line or exception message.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from scanqueue import errors, images

SECRET_TYPE_DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
SECRET_TYPE_DOCKERCFG = "kubernetes.io/dockercfg"
DOCKERCONFIGJSON_KEY = ".dockerconfigjson"
DOCKERCFG_KEY = ".dockercfg"
#: ``defaultRegistryHost`` in keyring.go: the key ``https://index.docker.io/v1/`` becomes this.
DEFAULT_REGISTRY_HOST = "index.docker.io"
#: The account the ServiceAccount admission plugin assigns when the pod names none.
DEFAULT_SERVICE_ACCOUNT = "default"


class MalformedSecret(errors.PermanentError):
    """A pull secret the kubelet cannot read; names the secret, never its content."""


@dataclasses.dataclass(frozen=True)
class Credential:
    """One registry's credential from one pull secret, as the kubelet would use it.

    ``registry`` is the normalised key (``host[:port][/path]``), ``key`` the key as
    written in the secret, ``source`` the secret (``namespace/name``) or file.
    ``token`` is an ``identitytoken`` or ``registrytoken``; ``token_kind`` says which.
    """

    registry: str
    username: str
    password: str = dataclasses.field(default="", repr=False)
    token: str = dataclasses.field(default="", repr=False)
    source: str = ""
    key: str = ""
    email: str = ""
    token_kind: str = ""

    @property
    def host(self) -> str:
        """``host[:port]`` of ``registry`` (the key without its path)."""
        return self.registry.split("/", 1)[0]

    @property
    def origin(self) -> str:
        """Where it came from, for logs and ``explain``: ``source`` plus the key as written."""
        return f"{self.source} [{self.key or self.registry}]"

    def __str__(self) -> str:
        user = self.username or ("<token>" if self.token else "<anonymous>")
        return f"{user} for {self.registry} from {self.origin}"


# --- reading pull secrets ---------------------------------------------------------------


def parse_dockerconfig(content: str | bytes, *, source: str) -> list[Credential]:
    """Read the JSON of a pull secret, either format, detected by the ``auths`` wrapper.

    Returns one ``Credential`` per registry key, in the order written. Raises
    ``MalformedSecret`` (naming ``source``, never the content) when the JSON or
    an entry is invalid.
    """
    document: Mapping[str, Any] = _load_json(content, source=source, what="docker config")
    if _find_key(document, "auths") is not None:
        document = _auths_of(document, source=source, what="docker config")
    return _entries(document, source=source, what="docker config")


def from_secret(secret: Mapping[str, Any]) -> tuple[list[Credential], str | None]:
    """Read a Kubernetes Secret (camelCase dict, ``data`` base64) as ``MakeDockerKeyring`` does.

    Returns the credentials and, when the secret contributes none (another type,
    missing or empty key, no registry), the reason. Raises ``MalformedSecret``
    for bad base64 or invalid JSON; the message names ``namespace/name`` only.
    """
    metadata = secret.get("metadata") or {}
    source = f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"
    secret_type = secret.get("type") or ""
    data = secret.get("data") or {}
    if secret_type == SECRET_TYPE_DOCKERCONFIGJSON:
        data_key = DOCKERCONFIGJSON_KEY
    elif secret_type == SECRET_TYPE_DOCKERCFG:
        data_key = DOCKERCFG_KEY
    else:
        return [], (
            f"secret {source} has type {secret_type or '(none)'!r}; a pull secret must be "
            f"{SECRET_TYPE_DOCKERCONFIGJSON} or {SECRET_TYPE_DOCKERCFG}"
        )
    encoded = data.get(data_key)
    if not encoded:
        return [], (
            f"secret {source} of type {secret_type} has no {data_key} key (or it is empty); "
            f"recreate it with kubectl create secret docker-registry"
        )
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise MalformedSecret(
            f"secret {source}: data key {data_key} is not valid base64; recreate the secret"
        ) from None
    if not raw:
        return [], f"secret {source} of type {secret_type} has an empty {data_key} key"
    what = f"data key {data_key}"
    document: Mapping[str, Any] = _load_json(raw, source=f"secret {source}", what=what)
    if data_key == DOCKERCONFIGJSON_KEY:
        document = _auths_of(document, source=f"secret {source}", what=what)
    credentials = _entries(document, source=source, what=what, label=f"secret {source}")
    if not credentials:
        return [], f"secret {source}: {data_key} lists no registry"
    return credentials, None


def _load_json(content: str | bytes, *, source: str, what: str) -> dict[str, Any]:
    try:
        text = content.decode("utf-8") if isinstance(content, bytes) else content
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        # Never echo the parser's message: it quotes the content.
        raise MalformedSecret(
            f"{source}: {what} is not valid JSON; expected a docker config "
            '({"auths": {"<registry>": {...}}} or the legacy dockercfg map)'
        ) from None
    if not isinstance(document, dict):
        raise MalformedSecret(f"{source}: {what} is not a JSON object")
    return document


def _find_key(document: Mapping[str, Any], name: str) -> str | None:
    """The key Go's encoding/json would bind to field ``name`` (case-insensitive, exact first)."""
    if name in document:
        return name
    found = [k for k in document if k.lower() == name]
    return found[-1] if found else None


def _auths_of(document: Mapping[str, Any], *, source: str, what: str) -> Mapping[str, Any]:
    """``DockerConfigJSON.Auths``: missing or null means no registry."""
    key = _find_key(document, "auths")
    auths = document.get(key) if key is not None else None
    if auths is None:
        return {}
    if not isinstance(auths, Mapping):
        raise MalformedSecret(f"{source}: {what} field {key!r} is not a JSON object")
    return auths


def _entries(
    auths: Mapping[str, Any] | None, *, source: str, what: str, label: str = ""
) -> list[Credential]:
    """One credential per key that ``BasicDockerKeyring.Add`` would keep, in written order.

    ``label`` names the secret in error messages (default: ``source``).
    """
    credentials = []
    for key, entry in (auths or {}).items():
        fields = _entry_fields(entry, source=label or source, what=what, key=key)
        registry = normalize_key(key)
        if registry is None:  # Add(): url.Parse failed; the kubelet logs and ignores the entry
            continue
        credentials.append(
            dataclasses.replace(fields, registry=registry, source=source, key=_shown_key(key))
        )
    return credentials


_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?[^/@]*@")


def _shown_key(key: str) -> str:
    """The key as written, minus any ``user:password@`` in it: keys are printed (repr,
    ``explain``), and a key like ``https://bob:pw@reg.example.com`` must not print ``pw``."""
    return _USERINFO.sub(lambda m: (m.group(1) or "") + "***@", key, count=1)


def _entry_fields(entry: Any, *, source: str, what: str, key: str) -> Credential:
    """``DockerConfigEntry.UnmarshalJSON`` plus the token fields the kubelet does not read."""
    if entry is None:  # JSON null decodes to an empty entry in Go
        entry = {}
    if not isinstance(entry, Mapping):
        raise MalformedSecret(f"{source}: {what} entry {key!r} is not a JSON object")
    values: dict[str, str] = {}
    for name, value in entry.items():  # Go binds field names case-insensitively
        field = name.lower()
        if field not in {"username", "password", "email", "auth", "identitytoken", "registrytoken"}:
            continue
        if value is not None and not isinstance(value, str):
            raise MalformedSecret(f"{source}: {what} entry {key!r} field {name!r} is not a string")
        values[field] = value or ""
    username, password = values.get("username", ""), values.get("password", "")
    if values.get("auth"):
        username, password = _decode_auth(values["auth"], source=source, what=what, key=key)
    token, token_kind = "", ""
    for kind in ("registrytoken", "identitytoken"):
        if values.get(kind):
            token, token_kind = values[kind], kind
            break
    return Credential(
        registry="",
        username=username,
        password=password,
        token=token,
        email=values.get("email", ""),
        token_kind=token_kind,
    )


def _decode_auth(field: str, *, source: str, what: str, key: str) -> tuple[str, str]:
    """``decodeDockerConfigFieldAuth``: padded base64 if it ends in '=', else unpadded."""
    problem = (
        f"{source}: {what} entry {key!r} has an auth field that is not "
        "base64 of username:password; recreate the secret"
    )
    # Go's decoders skip '\r' and '\n' and nothing else.
    compact = field.replace("\r", "").replace("\n", "")
    if not field.strip().endswith("="):
        if "=" in compact or len(compact) % 4 == 1:
            raise MalformedSecret(problem)
        compact += "=" * (-len(compact) % 4)
    try:
        decoded = base64.b64decode(compact, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise MalformedSecret(problem) from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise MalformedSecret(problem)
    return username, password


# --- keys and matching ------------------------------------------------------------------

# Characters Go's net/url accepts in a host (``shouldEscape`` with ``encodeHost``).
_HOST_RE = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:\[\]<>\"%\u0080-\U0010ffff]*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_PORT_RE = re.compile(r"^(?::[0-9]*)?$")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def normalize_key(key: str) -> str | None:
    """The keyring key for a pull-secret key, as ``BasicDockerKeyring.Add`` computes it.

    ``https://`` is assumed when no scheme is given, a leading ``/v1/`` or ``/v2/`` is
    dropped, and the result is ``host[:port]`` plus the remaining path (if not ``/``).
    Returns None when Go's ``url.Parse`` would refuse the key (the kubelet ignores it).
    """
    value = key if key.startswith(("https://", "http://")) else "https://" + key
    parsed = _parse_url(value)
    if parsed is None:
        return None
    host, path = parsed
    if path.startswith(("/v2/", "/v1/")):
        path = path[3:]
    return host + path if path and path != "/" else host


def _parse_url(value: str) -> tuple[str, str] | None:
    """(host[:port], unescaped path) as Go's ``url.Parse`` gives them, or None on its errors.

    Written out rather than ``urllib.parse`` because Python reads ``[...]`` in a host
    as IPv6 and refuses globs like ``reg[0-9].example.com`` that Go accepts. As in Go,
    a ``?`` ends the host (it starts the query), so ``?`` globs never reach a label.
    """
    if _CONTROL_RE.search(value):
        return None
    rest = value.partition("#")[0].partition("://")[2].partition("?")[0]
    authority, slash, path = rest.partition("/")
    host = authority.rpartition("@")[2]  # url.URL.Host excludes user info
    if "%" in host or not _HOST_RE.match(host):
        return None
    # parseHost/validOptionalPort: after "]" (IPv6) or the last ":", only ":" and digits.
    if host.startswith("["):
        end = host.rfind("]")
        if end < 0:
            return None
        port = host[end + 1 :]
    else:
        port = host[host.rfind(":") :] if ":" in host else ""
    if not _PORT_RE.match(port):
        return None
    path = slash + path
    if _BAD_ESCAPE_RE.search(path):
        return None
    try:
        return host, urllib.parse.unquote(path, errors="strict")
    except UnicodeDecodeError:
        return None


def _split_host_port(host: str) -> tuple[list[str], str]:
    """``splitURL``: host labels and port; without a parseable port, the whole host."""
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        if end > 0 and rest.startswith(":") and rest.count(":") == 1:
            return host[1:end].split("."), rest[1:]
        return host.split("."), ""
    name, colon, port = host.rpartition(":")
    if colon and ":" not in name:
        return name.split("."), port
    return host.split("."), ""


def urls_match(glob: str, target: str) -> bool:
    """``URLsMatch``: does keyring key ``glob`` cover ``target`` (``host[:port]/path``)?"""
    glob_url, target_url = _parse_url("https://" + glob), _parse_url("https://" + target)
    if glob_url is None or target_url is None:
        return False
    glob_labels, glob_port = _split_host_port(glob_url[0])
    target_labels, target_port = _split_host_port(target_url[0])
    if glob_port != target_port or len(glob_labels) != len(target_labels):
        return False
    if not target_url[1].startswith(glob_url[1]):
        return False
    return all(_glob_match(g, t) for g, t in zip(glob_labels, target_labels, strict=True))


def _glob_match(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match`` on Unix; a malformed pattern never matches (Lookup drops errors)."""
    regex = _glob_regex(pattern)
    return regex is not None and regex.fullmatch(name) is not None


def _glob_regex(pattern: str) -> re.Pattern[str] | None:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i == len(pattern):
                return None
            out.append(re.escape(pattern[i]))
        elif c == "[":
            i += 1
            negate = i < len(pattern) and pattern[i] == "^"
            if negate:
                i += 1
            ranges: list[str] = []
            while True:
                if i >= len(pattern) or (pattern[i] == "]" and ranges):
                    break
                lo, i = _class_char(pattern, i)
                if lo is None:
                    return None
                hi = lo
                if i < len(pattern) and pattern[i] == "-":
                    upper, i = _class_char(pattern, i + 1)
                    if upper is None:
                        return None
                    hi = upper
                # Go accepts a reversed range; it just matches nothing.
                ranges.append(f"{re.escape(lo)}-{re.escape(hi)}" if lo <= hi else "")
            if i >= len(pattern):
                return None
            body = "".join(ranges)
            if not body:
                out.append("." if negate else "(?!)")
            else:
                out.append(f"[{'^' if negate else ''}{body}]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _class_char(pattern: str, i: int) -> tuple[str | None, int]:
    """One (possibly escaped) character of a ``[...]`` class and the index after it."""
    if i >= len(pattern) or pattern[i] in "-]":
        return None, i
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            return None, i
    return pattern[i], i + 1


def is_default_registry_match(name: str) -> bool:
    """``isDefaultRegistryMatch``: would ``name`` (``Reference.name``) pull from Docker Hub?"""
    first, slash, _ = name.partition("/")
    if not first:
        return False
    if not slash or first in (images.DOCKER_HUB, images.DOCKER_HUB_LEGACY):
        return True
    return "." not in first and ":" not in first


def match(image: images.Reference, credentials: Sequence[Credential]) -> list[Credential]:
    """Every credential of one keyring that the kubelet would try for ``image``, in its order.

    Keys are tried reverse-sorted (more specific paths first); credentials under the
    same key keep the order given. Only when no key matched do Docker Hub images get
    the credentials stored under ``index.docker.io``. Nothing is merged.
    """
    target = image.name  # the kubelet looks up ParseNormalizedNamed(image).Name()
    by_key: dict[str, list[Credential]] = {}
    for credential in credentials:
        by_key.setdefault(credential.registry, []).append(credential)
    found = [
        c for key in sorted(by_key, reverse=True) if urls_match(key, target) for c in by_key[key]
    ]
    if found:
        return found
    if is_default_registry_match(target):
        return list(by_key.get(DEFAULT_REGISTRY_HOST, []))
    return []


def candidates(
    image: images.Reference, keyrings: Sequence[Sequence[Credential]]
) -> list[Credential]:
    """The credentials to try for ``image``, in the kubelet's order.

    ``keyrings`` holds one list per pull secret, in the order the pod lists them
    (or its service account's, see ``pull_secret_names``). The kubelet puts every
    pull secret into one keyring (``MakeDockerKeyring``), so this is ``match`` over
    their concatenation.
    """
    return match(image, [c for keyring in keyrings for c in keyring])


# --- which secrets a pod uses -----------------------------------------------------------


def service_account_name(pod_spec: Mapping[str, Any]) -> str:
    """The pod's service account: ``serviceAccountName``, the deprecated
    ``serviceAccount``, else ``default`` (as the ServiceAccount admission plugin sets it)."""
    return str(
        pod_spec.get("serviceAccountName")
        or pod_spec.get("serviceAccount")
        or DEFAULT_SERVICE_ACCOUNT
    )


def pull_secret_names(
    pod_spec: Mapping[str, Any], service_account: Mapping[str, Any] | None
) -> list[str]:
    """Names of the pull secrets to read, in order.

    The pod's ``imagePullSecrets``; only when it lists none, its service account's
    (``service_account`` is that ServiceAccount object, or None if it is missing), as
    the ServiceAccount admission plugin copies them.
    """
    names = _names(pod_spec.get("imagePullSecrets"))
    if names or service_account is None:
        return names
    return _names(service_account.get("imagePullSecrets"))


def _names(refs: Iterable[Mapping[str, Any]] | None) -> list[str]:
    return [str(ref["name"]) for ref in refs or () if ref and ref.get("name")]
