"""Real Trivy reads the DBs our writer makes: planted advisories, and only those, are found,
standalone, through a Trivy server and from a registry (--db-repository)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from scanqueue.sim import imagefs, scanner, trivydb
from tests.support import trivy_fixtures
from tests.support.trivy_fixtures import EXPECTED, IMAGES, findings

OFFLINE = list(scanner.OFFLINE)


def _rootfs(tmp_path: Path, image: str, *extra: str) -> dict[str, Any]:
    root = imagefs.write(tmp_path / f"root-{image}", IMAGES[image])
    done = scanner.run(["rootfs", "--format", "json", "--quiet", "--scanners", "vuln",
                        *extra, str(root)], timeout=120)  # fmt: skip
    assert done.exit_code == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_standalone_scan_finds_exactly_the_planted_advisories(tmp_path: Path, image: str) -> None:
    cache = trivy_fixtures.seeded_cache(tmp_path)
    report = _rootfs(tmp_path, image, "--cache-dir", str(cache), *OFFLINE)
    assert findings(report) == EXPECTED[image]


def test_db_file_is_never_written_by_a_scan(tmp_path: Path) -> None:
    cache = trivy_fixtures.seeded_cache(tmp_path)
    before = (cache / "db" / "trivy.db").read_bytes()
    _rootfs(tmp_path, "alpine", "--cache-dir", str(cache), *OFFLINE)
    assert (cache / "db" / "trivy.db").read_bytes() == before


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_server_mode_finds_the_same(
    tmp_path: Path, image: str, trivy_server: scanner.Server
) -> None:
    report = _rootfs(tmp_path, image, "--server", trivy_server.url,
                     "--cache-dir", str(tmp_path / "client-cache"))  # fmt: skip
    assert findings(report) == EXPECTED[image]


def test_thousands_of_findings_from_a_multi_page_db(tmp_path: Path) -> None:
    # 2,000 apk packages, one advisory each: the platform and vulnerability buckets span
    # many leaf pages under branch pages
    names = [f"pkg{i:04d}" for i in range(2000)]
    advisories = trivydb.advisories(
        {"source": "alpine 3.19", "package": n, "id": f"CVE-2098-{i:05d}",
         "severity": trivydb.SEVERITIES[i % 5], "fixed": "2.0-r0"}
        for i, n in enumerate(names)
    )  # fmt: skip
    cache = tmp_path / "cache"
    db = trivydb.write_db(advisories, cache)
    assert (db / "trivy.db").stat().st_size > 20 * 4096
    root = imagefs.write(
        tmp_path / "root", imagefs.files("alpine 3.19.1", packages=[f"{n} 1.0-r0" for n in names])
    )
    done = scanner.run(["rootfs", "--format", "json", "--quiet", "--scanners", "vuln",
                        "--cache-dir", str(cache), *OFFLINE, str(root)], timeout=240)  # fmt: skip
    assert done.exit_code == 0, done.stderr
    found = findings(json.loads(done.stdout))
    assert len(found) == 2000
    assert ("CVE-2098-01234", "pkg1234", trivydb.SEVERITIES[1234 % 5], "2.0-r0") in found


def test_db_from_a_registry_with_db_repository(tmp_path: Path, registry_factory: Any) -> None:
    registry = registry_factory(users={"db": "db-pw-1"})
    digest = registry.push("team/app", "1", contents=IMAGES["alpine"])
    trivydb.push(trivydb.load(trivy_fixtures.ADVISORIES), f"{registry.host}/mirror/trivy-db:2",
                 username="db", password="db-pw-1")  # fmt: skip
    cache = tmp_path / "empty-cache"
    done = scanner.run(
        [
            "image",
            "--format",
            "json",
            "--quiet",
            "--scanners",
            "vuln",
            "--cache-dir",
            str(cache),
            "--db-repository",
            f"{registry.host}/mirror/trivy-db:2",
            "--skip-java-db-update",
            f"{registry.host}/team/app@{digest}",
        ],
        env={"TRIVY_USERNAME": "db", "TRIVY_PASSWORD": "db-pw-1", "TRIVY_INSECURE": "true"},
        timeout=120,
    )
    assert done.exit_code == 0, done.stderr
    assert findings(json.loads(done.stdout)) == EXPECTED["alpine"]
    assert (cache / "db" / "trivy.db").read_bytes() == (
        trivy_fixtures.seeded_cache(tmp_path / "ref") / "db" / "trivy.db"
    ).read_bytes()


def test_missing_binary_names_the_sim_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(scanner.sys, "executable", str(tmp_path / "python"))
    with pytest.raises(scanner.TrivyMissingError, match=r"scanqueue\[sim\]"):
        scanner.binary()
    assert shutil.which("trivy") is None
