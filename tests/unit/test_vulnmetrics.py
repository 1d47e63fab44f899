"""vulnmetrics.render: the exposition text of a snapshot (pure; no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from scanqueue import vulnmetrics
from scanqueue.store import overview

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HEALTH = vulnmetrics.Health(up=True, refresh_seconds=0.01, refreshed_at=NOW.timestamp(), errors=0)


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def test_every_severity_and_fixable_pair_of_a_workload_is_present_zeros_included() -> None:
    snap = overview.Snapshot(
        vulnerabilities=(overview.VulnerabilityCount(
            "c", "ns", "Deployment", "web", "HIGH", True, 3
        ),),
        image_states=(("c", "scanned", 2),),
        oldest_scans=(("c", NOW - timedelta(hours=2)),),
    )  # fmt: skip
    samples = parse(vulnmetrics.render(snap, now=NOW, health=HEALTH))
    series = samples["scanqueue_workload_vulnerabilities"]
    assert len(series) == 10  # 5 severities x fixable true/false
    assert sum(v for _, v in series) == 3
    assert [v for l, v in series if l["severity"] == "HIGH" and l["fixable"] == "true"] == [3]  # noqa: E741
    assert {(l["state"], v) for l, v in samples["scanqueue_images"]} == {  # noqa: E741
        ("scanned", 2), ("unscanned", 0), ("failing", 0),
    }  # fmt: skip
    assert samples["scanqueue_oldest_scan_age_seconds"] == [({"cluster": "c"}, 7200.0)]


def test_label_values_are_escaped_and_every_exported_name_is_declared() -> None:
    snap = overview.Snapshot(
        vulnerabilities=(overview.VulnerabilityCount(
            'a"b', "n\\s", "Pod", "x\ny", "LOW", False, 1
        ),),
        image_states=(),
        oldest_scans=(),
    )  # fmt: skip
    text = vulnmetrics.render(snap, now=NOW, health=HEALTH)
    samples = parse(text)
    labels = {l["cluster"] for l, _ in samples["scanqueue_workload_vulnerabilities"]}  # noqa: E741
    assert labels == {'a"b'}
    assert {l["workload"] for l, _ in samples["scanqueue_workload_vulnerabilities"]} == {"x\ny"}  # noqa: E741
    assert set(samples) <= set(vulnmetrics.METRICS)


def test_without_a_snapshot_only_the_exporters_health_is_served() -> None:
    down = vulnmetrics.Health(up=False, refresh_seconds=0, refreshed_at=0, errors=2)
    samples = parse(vulnmetrics.render(None, now=NOW, health=down))
    assert samples["scanqueue_vulnmetrics_up"] == [({}, 0.0)]
    assert samples["scanqueue_vulnmetrics_refresh_errors_total"] == [({}, 2.0)]
    assert "scanqueue_workload_vulnerabilities" not in samples
