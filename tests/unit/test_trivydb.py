"""The advisory file -> trivy-db v2 tree: layout, strict parsing, same input same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scanqueue.sim import bbolt, imagefs, trivydb
from tests.support import trivy_fixtures


def test_layout_follows_trivy_db_v2() -> None:
    tree = trivydb.tree(trivydb.load(trivy_fixtures.ADVISORIES))
    assert set(tree) == {
        b"vulnerability", b"data-source", b"alpine 3.19", b"alpine 3.18", b"debian 12",
        b"pip::GitHub Security Advisory pip",
    }  # fmt: skip
    assert json.loads(tree[b"alpine 3.19"][b"musl"][b"CVE-2099-1001"]) == {
        "FixedVersion": "1.2.4-r3"
    }
    unfixed = json.loads(tree[b"debian 12"][b"glibc"][b"CVE-2099-2002"])
    assert unfixed == {"Status": 2, "Severity": 1}
    pip = json.loads(tree[b"pip::GitHub Security Advisory pip"][b"requests"][b"CVE-2099-3001"])
    assert pip == {"VulnerableVersions": ["<2.32.0"], "PatchedVersions": ["2.32.0"]}
    vuln = json.loads(tree[b"vulnerability"][b"CVE-2099-1002"])
    assert (vuln["Severity"], vuln["VendorSeverity"]) == ("CRITICAL", {"alpine": 4})
    source = json.loads(tree[b"data-source"][b"pip::GitHub Security Advisory pip"])
    assert source["ID"] == "ghsa"


def test_same_advisories_same_db_bytes_and_artifact(tmp_path: Path) -> None:
    advisories = trivydb.load(trivy_fixtures.ADVISORIES)
    reordered = trivydb.AdvisoryFile(tuple(reversed(advisories.advisories)), advisories.updated_at)
    one = trivydb.write_db(advisories, tmp_path / "one")
    two = trivydb.write_db(reordered, tmp_path / "two")
    for name in ("trivy.db", "metadata.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes()
    assert trivydb.artifact(advisories) == trivydb.artifact(reordered)
    assert json.loads((one / "metadata.json").read_text())["NextUpdate"] == "2999-01-01T00:00:00Z"


def test_one_more_advisory_changes_the_db() -> None:
    advisories = trivydb.load(trivy_fixtures.ADVISORIES)
    more = advisories.plus(
        trivydb.Advisory("alpine 3.19", "zlib", "CVE-2099-1005", "MEDIUM", fixed="1.3.1-r1")
    )
    assert bbolt.dumps(trivydb.tree(more)) != bbolt.dumps(trivydb.tree(advisories))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"source": "alpine 3.19", "package": "musl", "id": "C", "severity": "HIGH"}, "fixed"),
        ({"source": "alpine", "package": "m", "id": "C", "severity": "LOW", "fixed": "1"},
         "release"),
        ({"source": "fedora 40", "package": "m", "id": "C", "severity": "LOW"}, "must be"),
        ({"source": "pip", "package": "m", "id": "C", "severity": "SEVERE"}, "severity"),
        ({"source": "pip", "package": "m", "id": "C"}, "missing severity"),
        ({"source": "debian 12", "package": "m", "id": "C", "severity": "LOW", "vulnerable": "<1"},
         "for pip"),
        ({"source": "pip", "package": "m", "id": "C", "severity": "LOW", "fix": "1"}, "unknown"),
    ],
)  # fmt: skip
def test_bad_advisories_are_refused_with_the_entry_named(entry: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(trivydb.AdvisoryError, match=message) as raised:
        trivydb.advisories([entry])
    assert "advisory 1" in str(raised.value)


def test_listing_an_advisory_twice_is_an_error() -> None:
    entry = {"source": "pip", "package": "Requests", "id": "C", "severity": "LOW"}
    with pytest.raises(trivydb.AdvisoryError, match="listed twice"):
        trivydb.advisories([entry, {**entry, "package": "requests"}])


def test_image_files_carry_the_package_metadata_trivy_reads() -> None:
    files = imagefs.files("debian 12.5", packages=["libssl3 3.0.11-1 openssl"], pip=["My-Pkg 1.0"])
    assert files["etc/debian_version"] == b"12.5\n"
    assert b"Source: openssl\n" in files["var/lib/dpkg/status"]
    meta = "usr/local/lib/python3.12/site-packages/My_Pkg-1.0.dist-info/METADATA"
    assert files[meta].endswith(b"Name: My-Pkg\nVersion: 1.0\n")
    alpine = imagefs.files("alpine 3.19.1", packages=["libcrypto3 3.1.4-r5 openssl"])
    assert b"P:libcrypto3\nV:3.1.4-r5\n" in alpine["lib/apk/db/installed"]
    assert b"o:openssl\n" in alpine["lib/apk/db/installed"]
    assert imagefs.layer(files) == imagefs.layer(dict(reversed(files.items())))
    with pytest.raises(ValueError, match="expected 'alpine"):
        imagefs.files("fedora 40")
