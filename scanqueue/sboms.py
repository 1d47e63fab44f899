"""Stored SBOMs and rescans: what is kept per digest, whether it can be trusted, what is due.

Why it exists: an image digest never changes, only the advisories do. The
first successful full scan of a digest keeps its package list (CycloneDX,
gzip'd); later evaluations run ``trivy sbom`` on it (docs/rescans.md). This
module holds the pure decisions around that: is a report's package list
complete enough to keep, can a stored document be read back, is the Trivy
that listed the packages recent enough, and is the next evaluation of a
digest a rescan or a full scan, and why.

What it must never do: hand an unreadable or empty package list to Trivy (an
empty SBOM would be a silent "no findings"), or do I/O.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
import zlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

from scanqueue import errors

FORMAT = "cyclonedx"
COMPRESSION = "gzip"
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


class UnusableSbom(errors.PermanentError):
    """A stored SBOM that cannot be evaluated: the message says what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class Packed:
    """An SBOM as stored: compressed bytes plus what the docs and metrics report."""

    document: bytes  # gzip of the CycloneDX JSON
    size_bytes: int  # uncompressed
    packages: int  # components listed


def listed_packages(report: Mapping[str, Any]) -> str | None:
    """Why a Trivy JSON report's package list cannot be kept, or None when it can.

    Kept only when Trivy listed the packages (``--list-all-pkgs``, on in the
    scan Jobs): every result that has findings lists packages too, and there is
    at least one package. A report without (an older Trivy, a recorded report
    of vulnerable packages only) would make a rescan miss advisories silently.
    """
    results = report.get("Results") or []
    packages = 0
    for result in results:
        listed = result.get("Packages") or []
        if result.get("Vulnerabilities") and not listed:
            target = result.get("Target") or "a result"
            return f"{target} lists findings but not its packages (scanned without --list-all-pkgs)"
        packages += len(listed)
    if packages == 0:
        return "the report lists no package"
    return None


def pack(cyclonedx: bytes) -> Packed:
    """Compress a CycloneDX document for storage; ``UnusableSbom`` if it is not one."""
    components = _components(cyclonedx, "the converted SBOM")
    return Packed(gzip.compress(cyclonedx, mtime=0), len(cyclonedx), components)


def unpack(document: bytes, *, digest: str) -> bytes:
    """The CycloneDX JSON of a stored SBOM, checked readable and non-empty.

    Raises ``UnusableSbom`` naming the digest and what is wrong (truncated
    compression, not JSON, not CycloneDX, no component).
    """
    try:
        data = gzip.decompress(document)
    except (OSError, EOFError, zlib.error) as e:
        raise UnusableSbom(
            f"stored SBOM of {digest} is not readable gzip ({e}); truncated row?"
        ) from None
    _components(data, f"stored SBOM of {digest}")
    return data


def _components(data: bytes, what: str) -> int:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise UnusableSbom(f"{what} is not JSON ({e}); truncated?") from None
    if not isinstance(doc, dict) or doc.get("bomFormat") != "CycloneDX":
        raise UnusableSbom(f"{what} is not a CycloneDX document (no bomFormat CycloneDX)")
    components = doc.get("components")
    if not isinstance(components, list) or not components:
        raise UnusableSbom(f"{what} lists no component; it would evaluate to no finding")
    return len(components)


def version_tuple(version: str | None) -> tuple[int, int, int] | None:
    """``"0.76.0"`` as ``(0, 76, 0)``; None for an absent or unparseable version."""
    found = _VERSION.match(version or "")
    if not found:
        return None
    return int(found[1]), int(found[2]), int(found[3] or 0)


def trusted(scanner_version: str | None, minimum: str) -> bool:
    """Whether packages listed by Trivy ``scanner_version`` are trusted (>= ``minimum``)."""
    found, floor = version_tuple(scanner_version), version_tuple(minimum)
    return found is not None and floor is not None and found >= floor


def rewrite_report(text: str, *, source_name: str, image: str) -> str:
    """A ``trivy sbom`` report as if of ``image``: ArtifactName and targets named after the
    image instead of the temporary file Trivy read (``sbom.cdx.json (debian 12.5)``)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return text  # the report parser refuses it with its own message
    if not isinstance(doc, dict):
        return text
    doc["ArtifactName"] = image
    for result in doc.get("Results") or []:
        target = result.get("Target")
        if isinstance(target, str) and target.startswith(source_name):
            result["Target"] = image + target[len(source_name) :]
    return json.dumps(doc)


Next = Literal["sbom", "full"]


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the next evaluation of a digest is, and why (``scanqueue explain`` prints it)."""

    next: Next  # "sbom": a rescan from the stored SBOM; "full": a scan Job in a cluster
    why: str
    due: bool  # whether it is due now


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A digest's last successful evaluation and its stored SBOM, as the store returns them."""

    finished_at: datetime | None  # None: never evaluated
    db_updated_at: datetime | None  # the DB it was evaluated against; None = unknown
    sbom_scanner_version: str | None  # Trivy of the stored SBOM
    has_sbom: bool
    full_scan_wanted: str | None  # a recorded reason to scan in full, or None


def decide(
    last: Evaluation,
    *,
    now: datetime,
    interval_seconds: int,
    db_updated_at: datetime | None,
    min_trivy_version: str,
) -> Decision:
    """The next evaluation of one digest: rescan from its SBOM, or full scan, and when.

    Due when the last evaluation is older than ``interval_seconds``, or when the
    farm's DB (``db_updated_at``) is newer than the one it used (or that one is
    unknown). A digest never evaluated, asked for a full scan, without an SBOM,
    or with one from a Trivy older than ``min_trivy_version`` gets a full scan;
    one whose full scan with rescans on kept no SBOM (no package listed) is left
    to the watcher's schedule (never due here).
    """
    if last.finished_at is None:
        return Decision("full", "never scanned: the watcher publishes its first scan", True)
    age = now - last.finished_at
    stale = age >= timedelta(seconds=interval_seconds)
    newer_db = db_updated_at is not None and (
        last.db_updated_at is None or last.db_updated_at < db_updated_at
    )
    if stale:
        when = (
            f"its last evaluation is {_age(age)} old (rescan.interval_seconds {interval_seconds})"
        )
    elif newer_db:
        used = last.db_updated_at.isoformat() if last.db_updated_at else "an unknown DB"
        when = f"the vulnerability DB of {db_updated_at:%Y-%m-%dT%H:%M:%SZ} is newer than {used}"
    else:
        left = timedelta(seconds=interval_seconds) - age
        when = f"evaluated {_age(age)} ago against the current DB; due in {_age(left)}"
    due = stale or newer_db
    if last.full_scan_wanted:
        return Decision("full", f"{last.full_scan_wanted}; {when}", True)
    if not last.has_sbom and last.db_updated_at is not None:
        # a full scan with rescans on kept nothing (its report listed no package): asking
        # more full scans would cost Jobs and credentials for no SBOM; the watcher's own
        # schedule (scan.rescan_interval_seconds) scans it, as without rescans
        why = "no SBOM: its last full scan listed no package to keep; the watcher scans it in full"
        return Decision("full", f"{why} every scan.rescan_interval_seconds", False)
    if not last.has_sbom:
        return Decision("full", f"no stored SBOM (scanned before rescans were on); {when}", due)
    if not trusted(last.sbom_scanner_version, min_trivy_version):
        version = last.sbom_scanner_version or "an unknown Trivy"
        why = (
            f"its SBOM came from {version}, older than rescan.min_trivy_version {min_trivy_version}"
        )
        return Decision("full", f"{why}; {when}", due)
    return Decision("sbom", when, due)


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 7200:
        return f"{seconds // 3600}h"
    if seconds >= 120:
        return f"{seconds // 60}min"
    return f"{seconds}s"
