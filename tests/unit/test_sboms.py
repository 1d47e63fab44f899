"""What is kept per digest, whether it can be read back, and what the next evaluation is."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scanqueue import sboms

DATA = Path(__file__).parents[1] / "data" / "trivy"
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
DB_OLD = datetime(2026, 1, 1, tzinfo=UTC)
DB_NEW = datetime(2026, 6, 1, tzinfo=UTC)
BOM = json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6",
                  "components": [{"name": "bash"}, {"name": "libc6"}]}).encode()  # fmt: skip


def _report(name: str) -> dict[str, object]:
    loaded = json.loads((DATA / name).read_text(encoding="utf-8-sig"))
    assert isinstance(loaded, dict)
    return loaded


def test_a_report_listing_its_packages_is_kept_and_one_listing_only_findings_is_not() -> None:
    assert sboms.listed_packages(_report("python-slim-debian-13.json")) is None
    why = sboms.listed_packages(_report("ecr-private-alpine-3.19.json"))
    assert why is not None and "without --list-all-pkgs" in why
    assert sboms.listed_packages({"Results": []}) == "the report lists no package"


def test_pack_and_unpack_round_trip_and_damage_is_named() -> None:
    packed = sboms.pack(BOM)
    assert (packed.size_bytes, packed.packages) == (len(BOM), 2)
    assert sboms.unpack(packed.document, digest="sha256:x") == BOM
    with pytest.raises(sboms.UnusableSbom, match="not readable gzip"):
        sboms.unpack(packed.document[:20], digest="sha256:x")
    with pytest.raises(sboms.UnusableSbom, match="not a CycloneDX document"):
        sboms.unpack(gzip.compress(b'{"SchemaVersion": 2}'), digest="sha256:x")
    with pytest.raises(sboms.UnusableSbom, match="lists no component"):
        sboms.pack(b'{"bomFormat": "CycloneDX", "components": []}')
    with pytest.raises(sboms.UnusableSbom, match="not JSON"):
        sboms.unpack(gzip.compress(BOM[:-5]), digest="sha256:x")


@pytest.mark.parametrize(
    ("version", "trusted"),
    [("0.76.0", True), ("0.50.0", True), ("v0.50.1", True), ("0.49.9", False), (None, False),
     ("dev", False)],
)  # fmt: skip
def test_only_sboms_from_a_recent_enough_trivy_are_trusted(
    version: str | None, trusted: bool
) -> None:
    assert sboms.trusted(version, "0.50.0") is trusted


def _evaluation(**changes: object) -> sboms.Evaluation:
    values: dict[str, object] = {
        "finished_at": NOW - timedelta(hours=1),
        "db_updated_at": DB_OLD,
        "sbom_scanner_version": "0.76.0",
        "has_sbom": True,
        "full_scan_wanted": None,
    }
    values.update(changes)
    return sboms.Evaluation(**values)  # type: ignore[arg-type]


def _decide(evaluation: sboms.Evaluation, db: datetime | None = DB_OLD) -> sboms.Decision:
    return sboms.decide(evaluation, now=NOW, interval_seconds=6 * 3600, db_updated_at=db,
                        min_trivy_version="0.50.0")  # fmt: skip


def test_a_digest_is_due_when_old_or_when_the_db_is_newer() -> None:
    fresh = _decide(_evaluation())
    assert (fresh.next, fresh.due) == ("sbom", False)
    assert "due in 5h" in fresh.why
    old = _decide(_evaluation(finished_at=NOW - timedelta(hours=7)))
    assert (old.next, old.due) == ("sbom", True)
    assert "7h old" in old.why
    newer = _decide(_evaluation(), db=DB_NEW)
    assert (newer.next, newer.due) == ("sbom", True)
    assert "newer than 2026-01-01" in newer.why
    unknown = _decide(_evaluation(db_updated_at=None), db=DB_NEW)
    assert unknown.due


def test_no_sbom_an_old_trivy_or_a_wish_means_a_full_scan() -> None:
    # scanned before rescans were on: no DB recorded, no SBOM
    none = _decide(_evaluation(has_sbom=False, db_updated_at=None), db=DB_NEW)
    assert (none.next, none.due) == ("full", True)
    assert none.why.startswith("no stored SBOM (scanned before rescans were on)")
    # scanned with rescans on, and nothing to keep: the watcher's schedule, never asked here
    empty = _decide(_evaluation(has_sbom=False, finished_at=NOW - timedelta(hours=7)), db=DB_NEW)
    assert (empty.next, empty.due) == ("full", False)
    assert "listed no package to keep" in empty.why
    old = _decide(_evaluation(sbom_scanner_version="0.45.0"), db=DB_NEW)
    assert old.next == "full" and "0.45.0, older than rescan.min_trivy_version" in old.why
    wanted = _decide(_evaluation(full_scan_wanted="stored SBOM is not readable gzip"))
    assert (wanted.next, wanted.due) == ("full", True)
    never = _decide(_evaluation(finished_at=None))
    assert never.next == "full" and "never scanned" in never.why


def test_a_sbom_report_is_renamed_after_the_image() -> None:
    text = json.dumps({"ArtifactName": "sbom.cdx.json", "Results": [
        {"Target": "sbom.cdx.json (debian 12.5)"}, {"Target": "Python"}]})  # fmt: skip
    renamed = json.loads(sboms.rewrite_report(text, source_name="sbom.cdx.json", image="r/a@d"))
    assert renamed["ArtifactName"] == "r/a@d"
    assert [r["Target"] for r in renamed["Results"]] == ["r/a@d (debian 12.5)", "Python"]


def test_rescan_settings_are_checked_at_load() -> None:
    from scanqueue import config, errors

    on = {"enabled": True, "interval_seconds": 86400}
    with pytest.raises(errors.ConfigError, match=r"rescan\.interval_seconds must be below"):
        config.from_mapping({"rescan": on}, environ={})
    with pytest.raises(errors.ConfigError, match=r"rescan\.min_trivy_version 'latest'"):
        config.from_mapping({"rescan": {"min_trivy_version": "latest"}}, environ={})
    with pytest.raises(errors.ConfigError, match=r"rescan\.max_per_plan must be positive"):
        config.from_mapping({}, environ={"SCANQUEUE_RESCAN_MAX_PER_PLAN": "0"})
    settings = config.from_mapping({}, environ={"SCANQUEUE_RESCAN_ENABLED": "true"})
    assert settings.rescan.enabled and settings.rescan.interval_seconds == 21600
