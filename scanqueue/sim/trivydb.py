"""Trivy vulnerability databases written from a readable advisory file (tests and demo).

Why it exists: the emulated kubelet runs the real Trivy, and a scan finds
exactly what its database says. Tests and the demo plant their own advisories
instead of downloading the public database (offline, tiny, known findings).

An advisory file (YAML or JSON) looks like::

    updated_at: "2026-01-01T00:00:00Z"      # optional; fixes UpdatedAt
    advisories:
      - source: alpine 3.19                 # "alpine X.Y", "debian N" or "pip"
        package: musl                       # apk name, Debian *source* package, pip project
        id: CVE-2025-0001
        severity: HIGH                      # UNKNOWN LOW MEDIUM HIGH CRITICAL
        fixed: 1.2.4-r3                     # optional: absent = no fix yet (not for alpine)
        title: musl heap overflow           # optional
        vulnerable: ["<2.32.0"]             # pip only; default "<fixed" (or every version)

``write_db`` turns it into ``db/trivy.db`` (trivy-db v2 layout: buckets
``vulnerability``, ``data-source`` and one per platform, holding a bucket per
package) and ``db/metadata.json``; ``artifact`` and ``push`` make it the OCI
artifact that ``trivy --db-repository`` downloads.

What it must never do: depend on time, randomness or dict order (same file,
same bytes), or talk to anything but the registry it is asked to push to.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import io
import json
import os
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from scanqueue.sim import bbolt

SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")
DEFAULT_UPDATED_AT = "2026-01-01T00:00:00Z"
NEXT_UPDATE = "2999-01-01T00:00:00Z"  # never stale: Trivy does not try to download
STATUS_AFFECTED = 2  # trivy-db types.Status: an OS advisory without a fix

DB_MEDIA_TYPE = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.aquasec.trivy.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"

_PIP_BUCKET = "pip::GitHub Security Advisory pip"
_SOURCES = {
    "alpine": {"ID": "alpine", "Name": "Alpine Secdb", "URL": "https://secdb.alpinelinux.org/"},
    "debian": {
        "ID": "debian",
        "Name": "Debian Security Tracker",
        "URL": "https://salsa.debian.org/security-tracker-team/security-tracker",
    },
    "pip": {
        "ID": "ghsa",
        "Name": "GitHub Security Advisory pip",
        "URL": "https://github.com/advisories?query=type%3Areviewed+ecosystem%3Apip",
    },
}


class AdvisoryError(ValueError):
    """An advisory file that cannot become a database; the message names the entry."""


@dataclasses.dataclass(frozen=True)
class Advisory:
    source: str  # "alpine 3.19", "debian 12", "pip"
    package: str
    id: str
    severity: str
    fixed: str = ""
    title: str = ""
    vulnerable: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        return self.source.split()[0]

    @property
    def bucket(self) -> str:
        """The platform bucket's name in trivy.db."""
        return _PIP_BUCKET if self.family == "pip" else self.source

    @property
    def package_key(self) -> str:
        if self.family == "pip":  # PEP 503 normal form, as trivy-db stores pip names
            return "-".join(self.package.lower().replace("_", "-").replace(".", "-").split())
        return self.package


def _advisory(entry: Any, where: str) -> Advisory:
    if not isinstance(entry, Mapping):
        raise AdvisoryError(f"{where}: expected a mapping with source, package, id, severity")
    unknown = set(entry) - {"source", "package", "id", "severity", "fixed", "title", "vulnerable"}
    if unknown:
        raise AdvisoryError(f"{where}: unknown keys {sorted(unknown)}")
    missing = [k for k in ("source", "package", "id", "severity") if not entry.get(k)]
    if missing:
        raise AdvisoryError(f"{where}: missing {', '.join(missing)}")
    source = " ".join(str(entry["source"]).split())
    family = source.split()[0]
    if family not in _SOURCES or (family == "pip") != (source == "pip"):
        raise AdvisoryError(f"{where}: source {source!r} must be 'alpine X.Y', 'debian N' or 'pip'")
    if family != "pip" and len(source.split()) != 2:
        raise AdvisoryError(f"{where}: source {source!r} needs its release ('alpine 3.19')")
    severity = str(entry["severity"]).upper()
    if severity not in SEVERITIES:
        raise AdvisoryError(f"{where}: severity {severity!r} must be one of {SEVERITIES}")
    fixed = str(entry.get("fixed") or "")
    if family == "alpine" and not fixed:
        raise AdvisoryError(f"{where}: Trivy reports Alpine advisories only with a fixed version")
    vulnerable = entry.get("vulnerable") or []
    if isinstance(vulnerable, str):
        vulnerable = [vulnerable]
    if vulnerable and family != "pip":
        raise AdvisoryError(f"{where}: 'vulnerable' ranges are for pip; OS packages use 'fixed'")
    return Advisory(
        source=source,
        package=str(entry["package"]),
        id=str(entry["id"]),
        severity=severity,
        fixed=fixed,
        title=str(entry.get("title") or ""),
        vulnerable=tuple(str(v) for v in vulnerable),
    )


@dataclasses.dataclass(frozen=True)
class AdvisoryFile:
    advisories: tuple[Advisory, ...]
    updated_at: str = DEFAULT_UPDATED_AT

    def plus(self, *more: Advisory) -> AdvisoryFile:
        """This file with ``more`` advisories added."""
        return dataclasses.replace(self, advisories=self.advisories + more)


def parse(data: Any) -> AdvisoryFile:
    """Return the advisories of a loaded advisory file (a dict). Raises ``AdvisoryError``."""
    if not isinstance(data, Mapping) or not isinstance(data.get("advisories"), list):
        raise AdvisoryError("advisory file: expected a mapping with an 'advisories' list")
    entries = data["advisories"]
    found = tuple(_advisory(e, f"advisory {i + 1}") for i, e in enumerate(entries))
    seen: set[tuple[str, str, str]] = set()
    for a in found:
        key = (a.bucket, a.package_key, a.id)
        if key in seen:
            raise AdvisoryError(f"advisory {a.id} of {a.package} ({a.source}) is listed twice")
        seen.add(key)
    return AdvisoryFile(found, str(data.get("updated_at") or DEFAULT_UPDATED_AT))


def load(path: str | os.PathLike[str]) -> AdvisoryFile:
    """Read an advisory file (YAML, of which JSON is a subset)."""
    with open(path, encoding="utf-8") as f:
        return parse(yaml.safe_load(f))


def advisories(entries: Iterable[Mapping[str, Any]], **kw: str) -> AdvisoryFile:
    """An advisory file from entries written inline (tests)."""
    return parse({"advisories": list(entries), **kw})


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def tree(advisory_file: AdvisoryFile) -> dict[bytes, Any]:
    """The bbolt tree of ``advisory_file`` in the trivy-db v2 layout."""
    vulns: dict[str, dict[str, Any]] = {}
    platforms: dict[bytes, dict[bytes, dict[bytes, bytes]]] = {}
    data_source: dict[bytes, bytes] = {}
    for a in advisory_file.advisories:
        source = _SOURCES[a.family]
        level = SEVERITIES.index(a.severity)
        vuln = vulns.setdefault(
            a.id,
            {
                "Title": a.title or f"{a.id} in {a.package}",
                "Description": f"{a.title or a.id}. Planted by scanqueue's test advisory file.",
                "Severity": a.severity,
                "VendorSeverity": {},
                "References": [f"https://avd.aquasec.com/nvd/{a.id.lower()}"],
            },
        )
        vuln["VendorSeverity"][source["ID"]] = level
        if a.family == "pip":
            ranges = list(a.vulnerable) or ([f"<{a.fixed}"] if a.fixed else [">=0"])
            body: dict[str, Any] = {"VulnerableVersions": ranges}
            if a.fixed:
                body["PatchedVersions"] = [a.fixed]
        elif a.fixed:
            body = {"FixedVersion": a.fixed}
        else:
            body = {"Status": STATUS_AFFECTED, "Severity": level}
        bucket = a.bucket.encode()
        platforms.setdefault(bucket, {}).setdefault(a.package_key.encode(), {})[a.id.encode()] = (
            _json(body)
        )
        data_source[bucket] = _json(source)
    out: dict[bytes, Any] = {
        b"vulnerability": {k.encode(): _json(v) for k, v in vulns.items()},
        b"data-source": data_source,
    }
    out.update(platforms)
    return out


def metadata(advisory_file: AdvisoryFile) -> dict[str, Any]:
    return {
        "Version": 2,
        "NextUpdate": NEXT_UPDATE,
        "UpdatedAt": advisory_file.updated_at,
        "DownloadedAt": advisory_file.updated_at,
    }


def write_db(advisory_file: AdvisoryFile, cache_dir: str | os.PathLike[str]) -> Path:
    """Write ``cache_dir/db/trivy.db`` and ``metadata.json``; return the ``db`` directory.

    ``cache_dir`` is what Trivy calls its cache directory (``--cache-dir``).
    """
    db = Path(cache_dir, "db")
    db.mkdir(parents=True, exist_ok=True)
    bbolt.write(db / "trivy.db", tree(advisory_file))
    (db / "metadata.json").write_text(json.dumps(metadata(advisory_file)) + "\n")
    return db


def _tar_gz(files: Mapping[str, bytes], mtime: int) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mtime = mtime
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(raw.getvalue(), mtime=0)


@dataclasses.dataclass(frozen=True)
class Artifact:
    """The DB as an OCI artifact: blobs by digest and the manifest bytes."""

    config: bytes
    layer: bytes
    manifest: bytes

    @staticmethod
    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()


def artifact(advisory_file: AdvisoryFile) -> Artifact:
    """The OCI artifact ``trivy --db-repository`` downloads, for ``advisory_file``."""
    files = {
        "trivy.db": bbolt.dumps(tree(advisory_file)),
        "metadata.json": (json.dumps(metadata(advisory_file)) + "\n").encode(),
    }
    layer = _tar_gz(files, mtime=0)
    config = b"{}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": Artifact.digest(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": DB_MEDIA_TYPE,
                "digest": Artifact.digest(layer),
                "size": len(layer),
                "annotations": {"org.opencontainers.image.title": "db.tar.gz"},
            }
        ],
    }
    return Artifact(config, layer, json.dumps(manifest, sort_keys=True).encode())


def push(
    advisory_file: AdvisoryFile,
    repository: str,
    *,
    username: str = "",
    password: str = "",
    timeout: float = 30,
) -> str:
    """Push the DB artifact to ``repository`` ("host:port/path:tag", plain http) and return
    the manifest digest. Basic auth when a username is given. Raises ``RuntimeError``."""
    host, _, rest = repository.partition("/")
    path, _, tag = rest.rpartition(":")
    if not path or "/" in tag:
        raise ValueError(f"{repository!r}: expected host:port/path:tag")
    base = f"http://{host}/v2/{path}"
    headers: dict[str, str] = {}
    if username:
        pair = base64.b64encode(f"{username}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {pair}"
    art = artifact(advisory_file)

    def call(method: str, url: str, data: bytes | None = None, **extra: str) -> Any:
        # http only: the URL is built above from "http://" and the registry's Location
        req = urllib.request.Request(url, data=data, method=method, headers={**headers, **extra})  # noqa: S310
        try:
            return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310
        except urllib.error.HTTPError as e:
            where = url.split("?", maxsplit=1)[0]
            raise RuntimeError(f"{method} {where}: HTTP {e.code}") from None

    for blob in (art.config, art.layer):
        digest = Artifact.digest(blob)
        with call("POST", f"{base}/blobs/uploads/") as answer:
            location = urllib.parse.urljoin(f"http://{host}/", answer.headers["Location"])
        sep = "&" if "?" in location else "?"
        url = f"{location}{sep}digest={urllib.parse.quote(digest)}"
        with call("PUT", url, blob, **{"Content-Type": "application/octet-stream"}):
            pass
    with call(
        "PUT", f"{base}/manifests/{tag}", art.manifest, **{"Content-Type": MANIFEST_MEDIA_TYPE}
    ) as answer:
        return str(answer.headers.get("Docker-Content-Digest") or Artifact.digest(art.manifest))
