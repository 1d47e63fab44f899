"""The files of a test image that carry real package metadata, and a reproducible layer of them.

Why it exists: Trivy finds packages by reading an image's metadata files, so a
test image that should have known vulnerable packages must hold exactly the
files Trivy reads: ``etc/os-release`` (and ``etc/debian_version`` for Debian),
``lib/apk/db/installed`` (Alpine, with each package's origin: Trivy 0.76
compares versions only when it has one), ``var/lib/dpkg/status`` (Debian, with each
binary package's source package) and ``*.dist-info/METADATA`` (pip).

What it must never do: depend on time or dict order (the same image contents
give the same layer bytes, hence the same digest), or write outside the root
it is given.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path

SITE_PACKAGES = "usr/local/lib/python3.12/site-packages"
_MTIME = 1577836800  # 2020-01-01: a fixed mtime, so the same files give the same layer


def _split(package: str) -> list[str]:
    parts = package.split()
    if len(parts) not in (2, 3):
        raise ValueError(f"package {package!r}: expected 'NAME VERSION' or 'NAME VERSION SOURCE'")
    return parts


def files(
    os_release: str = "alpine 3.19.1",
    *,
    packages: Iterable[str] = (),
    pip: Iterable[str] = (),
    extra: Mapping[str, str | bytes] | None = None,
) -> dict[str, bytes]:
    """The files of an image root: path (relative, no leading slash) -> bytes.

    ``os_release`` is "alpine 3.19.1" or "debian 12.5"; ``packages`` are the
    OS packages as "NAME VERSION" (Debian: optionally "NAME VERSION SOURCE",
    the source package that Debian advisories name; Alpine: "NAME VERSION ORIGIN",
    the origin defaulting to the name); ``pip`` are "NAME VERSION"
    Python distributions; ``extra`` adds any other file. Raises ``ValueError``.
    """
    family, _, version = os_release.partition(" ")
    out: dict[str, bytes] = {}
    if family == "alpine":
        out["etc/os-release"] = f'ID=alpine\nVERSION_ID={version}\nNAME="Alpine Linux"\n'.encode()
        stanzas = []
        for package in packages:
            parts = _split(package)
            origin = parts[2] if len(parts) == 3 else parts[0]  # Trivy compares the origin's
            stanzas.append(f"P:{parts[0]}\nV:{parts[1]}\nA:x86_64\nL:Apache-2.0\no:{origin}\n\n")
        if stanzas:
            out["lib/apk/db/installed"] = "".join(stanzas).encode()
    elif family == "debian":
        major = version.split(".")[0]
        out["etc/os-release"] = (
            f'PRETTY_NAME="Debian GNU/Linux {major}"\nNAME="Debian GNU/Linux"\n'
            f'VERSION_ID="{major}"\nID=debian\n'
        ).encode()
        out["etc/debian_version"] = f"{version}\n".encode()  # what Trivy's Debian analyzer reads
        stanzas = []
        for package in packages:
            parts = _split(package)
            source = f"Source: {parts[2]}\n" if len(parts) == 3 else ""
            stanzas.append(
                f"Package: {parts[0]}\nStatus: install ok installed\n{source}"
                f"Version: {parts[1]}\nArchitecture: amd64\n\n"
            )
        if stanzas:
            out["var/lib/dpkg/status"] = "".join(stanzas).encode()
    else:
        raise ValueError(f"os {os_release!r}: expected 'alpine X.Y.Z' or 'debian N.M'")
    for dist in pip:
        name, version_ = _split(dist)[:2]
        folder = f"{SITE_PACKAGES}/{name.replace('-', '_')}-{version_}.dist-info"
        out[f"{folder}/METADATA"] = (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version_}\n".encode()
        )
    for path, data in (extra or {}).items():
        out[path.lstrip("/")] = data.encode() if isinstance(data, str) else data
    return out


def _directories(paths: Iterable[str]) -> list[str]:
    found: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            found.add("/".join(parts[:i]))
    return sorted(found)


def layer(contents: Mapping[str, bytes]) -> bytes:
    """A reproducible uncompressed tar layer of ``contents`` (directories included)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in _directories(contents):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = _MTIME
            tar.addfile(info)
        for path in sorted(contents):
            info = tarfile.TarInfo(path)
            info.size = len(contents[path])
            info.mode = 0o644
            info.mtime = _MTIME
            tar.addfile(info, io.BytesIO(contents[path]))
    return out.getvalue()


def write(root: str | os.PathLike[str], contents: Mapping[str, bytes]) -> Path:
    """Write ``contents`` under ``root`` (for ``trivy rootfs``); return the root."""
    base = Path(root).resolve()
    for path, data in contents.items():
        target = (base / path).resolve()
        if base not in target.parents:
            raise ValueError(f"{path!r} leaves the image root")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return base
