"""The test vulnerability DB, images whose packages match it, and a Trivy server.

``tests/data/advisories/basic.yaml`` is the DB; ``IMAGES`` are the contents
of images whose packages it knows, and ``EXPECTED`` the findings real Trivy
must report for each (read off the advisory file: the comments there say
which advisory matches which package, and which must not).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scanqueue.sim import imagefs, scanner, trivydb
from tests.support import services

ADVISORIES = Path(__file__).parents[1] / "data" / "advisories" / "basic.yaml"

IMAGES = {
    "alpine": imagefs.files(
        "alpine 3.19.1", packages=["musl 1.2.4-r2", "busybox 1.36.1-r15", "zlib 1.3.1-r0"]
    ),
    "debian": imagefs.files(
        "debian 12.5",
        packages=["libssl3 3.0.11-1~deb12u2 openssl", "libc6 2.36-9 glibc", "bash 5.2.15-2"],
        pip=["requests 2.31.0", "idna 3.7"],
    ),
}

# (id, package as installed, severity, fixed version or "") per image
EXPECTED = {
    # musl < 1.2.4-r3, busybox < 1.36.1-r16; CVE-2099-1003 is fixed in r10 (installed r15),
    # CVE-2099-1004 is for alpine 3.18
    "alpine": {
        ("CVE-2099-1001", "musl", "HIGH", "1.2.4-r3"),
        ("CVE-2099-1002", "busybox", "CRITICAL", "1.36.1-r16"),
    },
    # libssl3 through its source openssl; libc6 through glibc, unfixed; CVE-2099-2003 names a
    # binary package and so matches nothing; urllib3 is not installed
    "debian": {
        ("CVE-2099-2001", "libssl3", "MEDIUM", "3.0.13-1~deb12u1"),
        ("CVE-2099-2002", "libc6", "LOW", ""),
        ("CVE-2099-3001", "requests", "MEDIUM", "2.32.0"),
    },
}


def findings(report: dict) -> set[tuple[str, str, str, str]]:  # type: ignore[type-arg]
    """(id, package, severity, fixed version) of every vulnerability in a Trivy JSON report."""
    return {
        (v["VulnerabilityID"], v["PkgName"], v["Severity"], v.get("FixedVersion", ""))
        for result in report.get("Results") or []
        for v in result.get("Vulnerabilities") or []
    }


@pytest.fixture(scope="session")
def trivy_cache() -> Iterator[Path]:
    """A Trivy cache directory holding the test DB (``db/trivy.db``), shared read-only."""
    with services.tempdir("sq-trivy-cache-") as tmp:
        trivydb.write_db(trivydb.load(ADVISORIES), tmp / "cache")
        yield tmp / "cache"


def seeded_cache(directory: Path, advisories: Path = ADVISORIES) -> Path:
    """A fresh Trivy cache directory under ``directory`` holding the DB of ``advisories``."""
    trivydb.write_db(trivydb.load(advisories), directory / "cache")
    return directory / "cache"


@pytest.fixture(scope="session")
def trivy_server() -> Iterator[scanner.Server]:
    """One ``trivy server`` on the test DB for the whole session (client/server mode)."""
    with services.tempdir("sq-trivy-server-") as tmp:
        server = scanner.Server(seeded_cache(tmp), log=tmp / "server.log").start()
        try:
            yield server
        finally:
            server.stop()
