"""Shared pieces of the emulated kubelet: image references, container exits, recorded reports,
and the digest a node pulls for a tag.

The scan pods themselves run the real Trivy (``podrun``); recorded reports are
what a pod prints when the emulator runs without real pulls (benchmarks) or,
set by a test, instead of a successful Trivy run's output. Digests resolve with
``skopeo inspect`` and a 0600 temporary auth file, not through scanqueue's
registry module, so that a bug in one is not hidden by the same bug in the
other. Credential values go only to that file, never to a log or a message.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True, eq=False)
class ContainerExit:
    """How a scan container ended: its exit code, its log, the digest it ran.

    Compared and hashed by identity: it is queued for the controllers in a set, and its
    log is a whole Trivy report (a megabyte), which hashing by value would read each time.
    """

    exit_code: int
    log: str
    digest: str | None = None


def split_image(image: str) -> tuple[str, str, str | None, str | None]:
    """(registry host, repository path, tag, digest) of an image reference (Docker defaults)."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        image, tag = image.rsplit(":", 1)
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = "docker.io", image
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = "docker.io"
    if host == "docker.io" and "/" not in path:
        path = f"library/{path}"
    return host, path, tag, digest


def repository(image: str) -> str:
    host, path, _, _ = split_image(image)
    return f"{host}/{path}"


class Reports:
    """Recorded Trivy reports by digest, by reference and by repository."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # bytes as recorded, and decoded once: the log of every scan of it is that text
        self._by_key: dict[str, _Recording] = {}
        # one entry per distinct content: a report recorded for many digests (300 in the
        # bench) is one text object, whose hash the server's encoding cache computes once;
        # a copy per digest cost a megabyte hashed and compared per log request
        self._entries: dict[bytes, _Recording] = {}

    def set(self, image_or_digest: str, report: bytes | str | Path) -> None:
        if isinstance(report, Path):
            data = report.read_bytes()
        elif isinstance(report, str):
            data = report.encode()
        else:
            data = report
        with self._lock:
            entry = self._entries.get(data)
            if entry is None:
                entry = self._entries[data] = _Recording(data)
            if DIGEST.fullmatch(image_or_digest):
                self._by_key[image_or_digest] = entry
            else:
                _, _, _, digest = split_image(image_or_digest)
                self._by_key[digest or repository(image_or_digest)] = entry

    def _entry(self, image: str, digest: str | None) -> _Recording | None:
        with self._lock:
            if digest and digest in self._by_key:
                return self._by_key[digest]
            return self._by_key.get(repository(image))

    def find(self, image: str, digest: str | None) -> bytes | None:
        entry = self._entry(image, digest)
        return None if entry is None else entry.data

    def report_for(
        self, image: str, digest: str | None, now: float, *, packages: bool = True
    ) -> str:
        """The recording of ``image`` as the scan prints it, else a generated empty report.

        ``packages``: whether Trivy was asked for ``--list-all-pkgs``; without it, Trivy
        writes no ``Packages`` list, so neither does the recording printed in its place.
        """
        entry = self._entry(image, digest)
        if entry is not None:
            return entry.text if packages else entry.without_packages()
        return generated_report(image, digest, now)


class _Recording:
    """One recorded report: byte for byte as recorded, byte-order mark and CRLF included (the
    parser must cope), and, made once when first asked, as Trivy writes it without
    ``--list-all-pkgs``: each result's ``Packages`` left out, the rest as recorded (JSON
    indented by two, the recording's byte-order mark and line endings kept; a recording
    that lists no packages is printed as it is)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.text = data.decode("utf-8", errors="replace")
        self._lock = threading.Lock()
        self._without: str | None = None

    def without_packages(self) -> str:
        with self._lock:
            if self._without is None:
                self._without = self._strip_packages()
            return self._without

    def _strip_packages(self) -> str:
        bom = "\ufeff" if self.text.startswith("\ufeff") else ""
        body = self.text.removeprefix(bom)
        try:
            document = json.loads(body)
        except ValueError:  # not JSON: printed as recorded, as a broken Trivy would
            return self.text
        results = document.get("Results") if isinstance(document, dict) else None
        if not isinstance(results, list):
            return self.text
        listed = [r for r in results if isinstance(r, dict) and "Packages" in r]
        if not listed:  # recorded without --list-all-pkgs: as recorded
            return self.text
        for result in listed:
            del result["Packages"]
        text = _indented(document) + "\n"
        if "\r\n" in body:
            text = text.replace("\n", "\r\n")
        return bom + text


def _indented(document: Any) -> str:
    """``document`` as JSON indented by two: by orjson (~3 ms for a 0.6 MB report, where
    json.dumps took ~57 ms on the first scan of every run), else by json.dumps for what
    orjson refuses (integers past 64 bits). The values are the same either way."""
    try:
        return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONEncodeError:
        return json.dumps(document, indent=2, ensure_ascii=False)


def generated_report(image: str, digest: str | None, now: float) -> str:
    """A valid schema-2 Trivy report with no vulnerabilities, naming the image."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    report = {
        "SchemaVersion": 2,
        "CreatedAt": created,
        "ArtifactName": image,
        "ArtifactType": "container_image",
        "Metadata": {
            "OS": {"Family": "alpine", "Name": "3.19.1"},
            "RepoDigests": [f"{repository(image)}@{digest}"] if digest else [],
        },
        "Results": [{"Target": f"{image} (alpine 3.19.1)", "Class": "os-pkgs", "Type": "alpine"}],
    }
    return json.dumps(report, indent=2) + "\n"


def plain_http(host: str) -> bool:
    """Whether Trivy (go-containerregistry) speaks plain http to ``host`` without being told:
    localhost, loopback and RFC 1918 addresses."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost" or name.startswith("127.") or name in ("[::1]", "::1"):
        return True
    if name.startswith("10.") or name.startswith("192.168."):
        return True
    parts = name.split(".")
    return (
        len(parts) == 4 and parts[0] == "172" and parts[1].isdigit() and 16 <= int(parts[1]) <= 31
    )


def resolve_digest(
    image: str,
    *,
    username: str = "",
    password: str = "",
    insecure: bool = True,
    timeout: float = 15,
) -> str | None:
    """The digest of ``image`` in its registry (``skopeo inspect``), or None when not found."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        return None
    host, _, _, digest = split_image(image)
    if digest:
        return digest
    if host.split(":")[0].endswith(".invalid"):
        return None  # RFC 2606: never resolves; do not wait for DNS to say so
    with tempfile.TemporaryDirectory(prefix="sq-sim-resolve-") as tmp:
        authfile = Path(tmp, "auth.json")
        auths: Mapping[str, object] = {}
        if username or password:
            auths = {host: {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}}
        fd = os.open(authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"auths": auths}, f)
        cmd = [skopeo, "inspect", "--authfile", str(authfile)]
        if insecure:
            cmd.append("--tls-verify=false")
        cmd.append(f"docker://{image}")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp}
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired:
            return None
    if done.returncode != 0:
        return None
    return str(json.loads(done.stdout).get("Digest") or "") or None
