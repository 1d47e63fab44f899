"""What the farm runs of Trivy itself: SBOM conversion, ``trivy sbom`` rescans, the DB version.

Why it exists: a rescan evaluates a digest's stored package list (CycloneDX)
against the current vulnerability DB inside a worker, with no cluster, registry
or credential involved (docs/rescans.md). This is the one module that starts
the ``trivy`` binary in a farm process (scan Jobs run theirs in the cluster).

What it must never do: download anything (``--skip-db-update``, no version
check, no telemetry), inherit the worker's environment (it holds the broker's
and the database's settings), or put the Trivy server's token in an argument
or a message (it goes in the child's environment only).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from scanqueue import errors

_OUTPUT_PREVIEW = 300  # characters of Trivy's stderr kept in an error
_UNREADABLE_SBOM = (
    "failed to decode",
    "failed to unmarshal",
    "unexpected end of json",
    "invalid character",
    "unable to decode",
    "unknown format",
    "sbom decode",
)


class TrivyFailed(errors.TemporaryError):
    """Trivy exited non-zero for a reason that may pass (server down, timeout)."""


class UnreadableSbom(errors.PermanentError):
    """Trivy could not read the SBOM it was given (truncated, wrong format)."""


@dataclasses.dataclass(frozen=True)
class Runner:
    """How to run Trivy: the binary, the farm's server (or a local DB) and a time limit."""

    binary: str
    server: str = ""  # Trivy server URL; empty = the DB in cache_dir
    cache_dir: str = ""  # holds db/trivy.db and db/metadata.json (local mode)
    token: str | None = dataclasses.field(default=None, repr=False)  # Trivy-Token, a secret
    timeout_seconds: float = 120.0


@dataclasses.dataclass(frozen=True)
class DbVersion:
    """The vulnerability DB a Trivy evaluates against."""

    updated_at: datetime  # metadata.json UpdatedAt
    trivy_version: str | None  # the server's Trivy version (None for a local DB)
    source: str  # the server URL or the cache directory


def find_binary(configured: str = "") -> str:
    """The ``trivy`` to run: ``configured``, else next to this Python, else on PATH.

    Raises ``ConfigError`` naming ``rescan.trivy_binary`` when there is none.
    """
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise errors.ConfigError(
            f"rescan.trivy_binary {configured!r} is not an executable file; "
            "install Trivy there or fix the path"
        )
    here = Path(sys.executable).parent / "trivy"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("trivy")
    if found:
        return found
    raise errors.ConfigError(
        "no trivy binary for SBOMs and rescans: put Trivy on the workers' PATH "
        "(the worker image carries it) or set rescan.trivy_binary"
    )


def _env(home: str, token: str | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "TMPDIR": home,
        "NO_COLOR": "1",
        "TRIVY_SKIP_VERSION_CHECK": "true",
        "TRIVY_DISABLE_TELEMETRY": "true",
    }
    if token:
        env["TRIVY_TOKEN"] = token
    return env


def _run(runner: Runner, args: Sequence[str], home: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            [runner.binary, *args],
            capture_output=True,
            env=_env(home, runner.token),
            cwd=home,
            timeout=runner.timeout_seconds,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TrivyFailed(
            f"trivy {args[0]} did not finish within {runner.timeout_seconds:g}s "
            "(rescan.timeout_seconds)"
        ) from None
    except OSError as e:
        raise errors.ConfigError(f"cannot run {runner.binary}: {e.strerror or e}") from None


def _tail(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    return (lines[-1] if lines else "no output")[-_OUTPUT_PREVIEW:]


def to_cyclonedx(runner: Runner, report: bytes | str) -> bytes:
    """``trivy convert --format cyclonedx`` of a Trivy JSON report: the CycloneDX JSON bytes.

    Raises ``PermanentError`` when Trivy refuses the report, ``TrivyFailed`` on a timeout.
    """
    data = report.encode() if isinstance(report, str) else report
    with tempfile.TemporaryDirectory(prefix="sq-trivy-") as home:
        source = Path(home, "report.json")
        source.write_bytes(data)
        done = _run(runner, ["convert", "--format", "cyclonedx", "--quiet", str(source)], home)
    if done.returncode != 0:
        raise errors.PermanentError(f"trivy convert refused the report: {_tail(done.stderr)}")
    return done.stdout


def scan_sbom(runner: Runner, document: bytes, *, name: str = "sbom.cdx.json") -> str:
    """``trivy sbom --format json`` on a CycloneDX ``document``: Trivy's JSON report text.

    Against ``runner.server`` when set, else the DB in ``runner.cache_dir``;
    never downloads. Raises ``UnreadableSbom`` when Trivy cannot read the
    document, ``TrivyFailed`` for any other failure (server unreachable, timeout).
    """
    args = ["sbom", "--format", "json", "--quiet", "--scanners", "vuln", "--skip-db-update",
            "--skip-java-db-update"]  # fmt: skip
    if runner.server:
        args += ["--server", runner.server]
    else:  # the local DB, read only (trivy sbom writes nothing there: a test checks it)
        args += ["--offline-scan"]
    with tempfile.TemporaryDirectory(prefix="sq-trivy-") as home:
        args += ["--cache-dir", runner.cache_dir or str(Path(home, "cache"))]
        source = Path(home, name)
        source.write_bytes(document)
        done = _run(runner, [*args, name], home)  # relative: results' targets start with it
    if done.returncode != 0:
        tail = _tail(done.stderr)
        if any(marker in tail.lower() for marker in _UNREADABLE_SBOM):
            raise UnreadableSbom(f"trivy sbom cannot read the stored SBOM: {tail}")
        against = f"Trivy server {runner.server}" if runner.server else f"DB in {runner.cache_dir}"
        if runner.server and "unauthenticated" in tail:
            raise errors.PermanentError(
                f"{against} refused the token: wrong or missing; check "
                f"rescan.trivy_server_token_file against the server's --token ({tail})"
            )
        raise TrivyFailed(f"trivy sbom against the {against} failed (exit {done.returncode}): "
                          f"{tail}")  # fmt: skip
    return done.stdout.decode(errors="replace")


def db_version(runner: Runner) -> DbVersion:
    """The DB ``runner`` evaluates against: the server's ``/version``, else the cache's
    ``db/metadata.json``. Raises ``TemporaryError`` when it cannot be read."""
    if runner.server:
        url = runner.server.rstrip("/") + "/version"
        request = urllib.request.Request(url)  # noqa: S310 - the configured server, http(s)
        if runner.token:
            request.add_header("Trivy-Token", runner.token)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                body = json.loads(response.read())
        except (OSError, ValueError) as e:
            raise errors.TemporaryError(f"Trivy server {url}: no DB version: {e}") from None
        meta = body.get("VulnerabilityDB") if isinstance(body, dict) else None
        version = body.get("Version") if isinstance(body, dict) else None
        source = runner.server
    else:
        path = Path(runner.cache_dir or ".", "db", "metadata.json")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise errors.TemporaryError(
                f"{path}: no vulnerability DB metadata ({e}); set rescan.trivy_server or "
                "put a Trivy DB in rescan.cache_dir"
            ) from None
        version, source = None, str(runner.cache_dir)
    updated = meta.get("UpdatedAt") if isinstance(meta, dict) else None
    try:
        when = datetime.fromisoformat(str(updated).replace("Z", "+00:00"))
    except ValueError:
        raise errors.TemporaryError(f"{source}: DB metadata without UpdatedAt") from None
    if when.tzinfo is None:
        raise errors.TemporaryError(f"{source}: DB UpdatedAt {updated!r} has no time zone")
    return DbVersion(when, str(version) if version else None, source)
