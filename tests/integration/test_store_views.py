"""The report views answer correctly for a small multi-cluster inventory (real PostgreSQL)."""

from __future__ import annotations

from collections import Counter

import pytest

from scanqueue import reports, store
from tests.support import results_fixtures as inv


@pytest.fixture
def inventory(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> store.Connection:
    inv.build_inventory(store_conn, trivy_reports)
    return store_conn


def _distinct_by_severity(report: reports.Report) -> dict[str, int]:
    keys = {
        (f.vulnerability.id, f.package, f.installed_version, f.target, f.severity)
        for f in report.findings
    }
    return dict(Counter(k[-1] for k in keys))


def test_current_findings_come_from_the_latest_successful_scan_of_each_running_digest(
    inventory: store.Connection,
) -> None:
    rows = inventory.execute(
        """SELECT cluster, namespace, workload, scan_id, count(*) FROM current_findings
            GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3"""
    ).fetchall()
    assert rows == [
        ("prod-eu", "team-a", "web", "s-web", 212),  # 3 pods, one row per finding
        ("prod-eu", "team-b", "api", "s-api-2", 7),  # not the older s-api-1, not failed s-api-3
        ("prod-us", "team-a", "web", "s-web", 212),  # the scan that ran in prod-us serves both
    ]


def test_severity_summary_per_cluster_namespace_workload(
    inventory: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    rows = inventory.execute(
        """SELECT cluster, namespace, workload_kind, workload,
                  critical, high, medium, low, unknown, fixable, total
             FROM severity_summary ORDER BY 1, 2, 4"""
    ).fetchall()
    debian = trivy_reports["python-debian-12-bom-crlf"]
    node = trivy_reports["node-alpine-3.19"]

    def expected(report: reports.Report) -> tuple[int, ...]:
        counts = _distinct_by_severity(report)
        fixable = len(
            {
                (f.vulnerability.id, f.package, f.installed_version, f.target)
                for f in report.findings
                if f.fixable
            }
        )
        return (*(counts.get(s, 0) for s in reports.SEVERITIES), fixable, sum(counts.values()))

    assert rows == [
        ("prod-eu", "team-a", "Deployment", "web", *expected(debian)),
        ("prod-eu", "team-b", "Deployment", "api", *expected(node)),
        ("prod-us", "team-a", "Deployment", "web", *expected(debian)),
    ]
    assert rows[0][4:9] == (6, 28, 78, 97, 3)  # the README's counts for that report
    assert rows[1][4:9] == (0, 1, 2, 2, 2)


def test_fixable_findings_are_critical_or_high_with_a_fixed_version(
    inventory: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    rows = inventory.execute(
        """SELECT DISTINCT cluster, workload, vulnerability_id, package, severity, fixed_version
             FROM fixable_findings"""
    ).fetchall()
    expected = set()
    for cluster, workload, key in [
        ("prod-eu", "web", "python-debian-12-bom-crlf"),
        ("prod-us", "web", "python-debian-12-bom-crlf"),
        ("prod-eu", "api", "node-alpine-3.19"),
    ]:
        for f in trivy_reports[key].findings:
            if f.fixable and f.severity in ("CRITICAL", "HIGH"):
                expected.add(
                    (cluster, workload, f.vulnerability.id, f.package, f.severity, f.fixed_version)
                )
    assert set(rows) == expected
    assert rows  # node-alpine has a fixable HIGH; the python images' few fixes are lower


def test_unscanned_images_say_why(inventory: store.Connection) -> None:
    rows = inventory.execute(
        """SELECT cluster, namespace, workload, digest, reason, last_success IS NOT NULL
             FROM unscanned_images ORDER BY 1, 2, 3"""
    ).fetchall()
    assert rows == [
        ("prod-eu", "team-a", "db", inv.DB, "never scanned", False),
        ("prod-eu", "team-b", "api", inv.API, "refused: registry timed out", True),
        (
            "prod-eu",
            "team-b",
            "nightly",
            inv.JOB,
            "refused: registry.example.com:5000 refused every credential (prod-eu/regcred)",
            False,
        ),
        ("prod-us", "team-a", "web", None, "digest not known yet (container not started)", False),
    ]


def test_scan_in_progress_after_a_success_is_not_listed_as_unscanned(
    inventory: store.Connection,
) -> None:
    store.start_scan(
        inventory, scan_id="s-web-2", cluster="prod-eu", digest=inv.WEB,
        image=f"{inv.REGISTRY}/team/web@{inv.WEB}", mode="registry", attempt=1,
        credential_source=None, started_at=inv.T0,
    )  # fmt: skip
    store.start_scan(
        inventory, scan_id="s-db", cluster="prod-eu", digest=inv.DB,
        image=f"{inv.REGISTRY}/team/db@{inv.DB}", mode="node", attempt=1,
        credential_source=None, started_at=inv.T0,
    )  # fmt: skip
    reasons = dict(
        inventory.execute(
            "SELECT workload, reason FROM unscanned_images WHERE digest IS NOT NULL"
        ).fetchall()
    )
    assert reasons["db"] == "scan in progress, none succeeded yet"
    assert "web" not in reasons


def test_finding_changes_between_the_last_two_scans_of_each_repository(
    inventory: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    def keys(report: reports.Report) -> set[tuple[str, str, str]]:
        return {(f.vulnerability.id, f.package, f.result_class or "") for f in report.findings}

    rows = inventory.execute(
        """SELECT repository, change, vulnerability_id, package, class, scan_id, previous_scan_id
             FROM finding_changes"""
    ).fetchall()
    got: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
    for repository, change, vuln, package, cls, scan_id, previous in rows:
        assert (scan_id, previous) == {
            "team/web": ("s-web", "s-web-old"),
            "team/api": ("s-api-2", "s-api-1"),
        }[repository]
        got.setdefault((repository, change), set()).add((vuln, package, cls))
    slim, debian = (
        keys(trivy_reports["python-slim-debian-13"]),
        keys(trivy_reports["python-debian-12-bom-crlf"]),
    )
    ecr, node = (
        keys(trivy_reports["ecr-private-alpine-3.19"]),
        keys(trivy_reports["node-alpine-3.19"]),
    )
    expected = {
        ("team/web", "new"): debian - slim,
        ("team/web", "resolved"): slim - debian,
        ("team/api", "new"): node - ecr,
        ("team/api", "resolved"): ecr - node,
    }
    assert got == {k: v for k, v in expected.items() if v}
    assert all(expected.values())  # the fixture really exercises both directions


def test_gone_containers_drop_out_of_every_view(inventory: store.Connection) -> None:
    store.forget_pods(
        inventory, cluster="prod-eu", namespace="team-b", pods=["api-0", "api-1"],
        at=inv.T0 + inv.timedelta(hours=1),
    )  # fmt: skip
    workloads = {r[0] for r in inventory.execute("SELECT DISTINCT workload FROM current_findings")}
    assert workloads == {"web"}
    assert inventory.execute(
        "SELECT count(*) FROM unscanned_images WHERE workload = 'api'"
    ).fetchone() == (0,)
