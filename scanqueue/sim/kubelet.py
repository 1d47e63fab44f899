"""What the emulated kubelet does for a scan pod: a real, independent pull, then the report.

The pull goes through ``skopeo inspect`` with a 0600 temporary auth file, not
through scanqueue's registry module, so that a bug in one is not hidden by
the same bug in the other. A refusal becomes the text Trivy prints
(``UNAUTHORIZED: authentication required``) and exit code 1; success becomes
the recorded Trivy report registered for that image (by digest, else by
repository, else a generated empty schema-2 report) and exit code 0.
Credential values are written only to the temporary auth file (or passed
as skopeo's ``--registry-token``) and never to a log or a message.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class ScanTarget:
    image: str  # as the scan pod names it: "host[:port]/repo@sha256:..."
    username: str = dataclasses.field(default="", repr=False)
    password: str = dataclasses.field(default="", repr=False)
    token: str = dataclasses.field(default="", repr=False)
    insecure: bool = False
    ca_pem: str = ""  # Trivy's --cacert file, read from the pod's volume; added to system CAs


@dataclasses.dataclass(frozen=True)
class Outcome:
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
        self._by_key: dict[str, bytes] = {}

    def set(self, image_or_digest: str, report: bytes | str | Path) -> None:
        if isinstance(report, Path):
            data = report.read_bytes()
        elif isinstance(report, str):
            data = report.encode()
        else:
            data = report
        with self._lock:
            if DIGEST.fullmatch(image_or_digest):
                self._by_key[image_or_digest] = data
            else:
                _, _, _, digest = split_image(image_or_digest)
                self._by_key[digest or repository(image_or_digest)] = data

    def find(self, image: str, digest: str | None) -> bytes | None:
        with self._lock:
            if digest and digest in self._by_key:
                return self._by_key[digest]
            return self._by_key.get(repository(image))

    def report_for(self, image: str, digest: str | None, now: float) -> str:
        found = self.find(image, digest)
        if found is not None:
            # byte for byte, byte-order mark and CRLF included: the parser must cope
            return found.decode("utf-8", errors="replace")
        return generated_report(image, digest, now)


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


def _trivy_failure(image: str, detail: str) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return (
        f"{stamp}\tFATAL\tFatal error\timage scan error: scan error: "
        "unable to initialize a scanner: "
        "unable to initialize an image scanner: unable to find the specified image "
        f'"{image}" in ["docker" "containerd" "podman" "remote"]: 4 errors occurred:\n'
        f"\t* docker error: unable to inspect the image ({image}): Cannot connect to the Docker "
        "daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n"
        f"\t* containerd error: containerd socket not found: /run/containerd/containerd.sock\n"
        f"\t* podman error: unable to initialize Podman client: no podman socket found: "
        "stat /run/podman/podman.sock: no such file or directory\n"
        f"\t* remote error: {detail}\n"
    )


def _remote_error(image: str, stderr: str) -> str:
    host, path, tag, digest = split_image(image)
    ref = digest or tag or "latest"
    scheme = "http" if plain_http(host) else "https"
    url = f"{scheme}://{host}/v2/{path}/manifests/{ref}"
    lowered = stderr.lower()
    scope = f"[map[Action:pull Class: Name:{path} Type:repository]]"
    if "unauthorized" in lowered or "authentication required" in lowered or "401" in lowered:
        return f"GET {url}: UNAUTHORIZED: authentication required; {scope}"
    if "denied" in lowered or "403" in lowered:
        return f"GET {url}: DENIED: requested access to the resource is denied"
    if "manifest unknown" in lowered or "not found" in lowered:
        return f"GET {url}: MANIFEST_UNKNOWN: manifest unknown; map[Tag:{ref}]"
    if "connection refused" in lowered:
        return f'Get "https://{host}/v2/": dial tcp {host}: connect: connection refused'
    # keep the last line of skopeo's message, without anything that could be a credential
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "unknown error"
    return re.sub(r"(?i)(bearer|basic)\s+\S+", r"\1 <redacted>", last)[:300]


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


def speaks_tls(host: str, timeout: float = 2.0) -> bool:
    """Whether ``host[:port]`` answers a TLS handshake (certificate not checked here).

    Trivy tries https first even for loopback registries and falls back to http
    only when the server does not speak TLS; a TLS registry's certificate is then
    checked. The probe is a bare handshake, so no request reaches a registry log.
    """
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        address = (name or host, int(port or 443))
        with (
            socket.create_connection(address, timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=name or host),
        ):
            return True
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return False


def pull(target: ScanTarget, *, timeout: float = 60) -> Outcome:
    """Inspect ``target.image`` in its registry with skopeo and the given credential."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        return Outcome(1, _trivy_failure(target.image, "skopeo not installed on the emulator host"))
    host, _, _, expected = split_image(target.image)
    with tempfile.TemporaryDirectory(prefix="sq-sim-pull-") as tmp:
        authfile = Path(tmp, "auth.json")
        auths: dict[str, dict[str, str]] = {}
        if target.username or target.password:
            auth = base64.b64encode(f"{target.username}:{target.password}".encode()).decode()
            auths[host] = {"auth": auth}
        fd = os.open(authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"auths": auths}, f)
        cmd = [skopeo, "inspect", "--raw", "--authfile", str(authfile)]
        if target.token:
            cmd += ["--registry-token", target.token]
        if target.insecure or (plain_http(host) and not speaks_tls(host)):
            cmd.append("--tls-verify=false")
        elif target.ca_pem:  # like Trivy's --cacert: these CAs on top of the system ones
            certs = Path(tmp, "certs")
            certs.mkdir()
            Path(certs, "ca.crt").write_text(target.ca_pem)
            cmd += ["--cert-dir", str(certs)]
        cmd.append(f"docker://{target.image}")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp}
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired:
            return Outcome(
                1, _trivy_failure(target.image, f"GET {host}: context deadline exceeded")
            )
    if done.returncode != 0:
        return Outcome(1, _trivy_failure(target.image, _remote_error(target.image, done.stderr)))
    return Outcome(0, "", expected)


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
