"""Fixtures for the results store: a connection to a fresh migrated database, report files."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scanqueue import reports, store

TRIVY_DATA = Path(__file__).parents[1] / "data" / "trivy"


@pytest.fixture
def store_conn(database_url: str) -> Iterator[store.Connection]:
    """One connection to a fresh migrated database (closed after the test)."""
    with store.connect(database_url) as conn:
        yield conn


@pytest.fixture(scope="session")
def trivy_reports() -> dict[str, reports.Report]:
    """The recorded schema-2 Trivy reports, parsed, by file stem."""
    return {
        path.stem: reports.parse_file(path)
        for path in sorted(TRIVY_DATA.glob("*.json"))
        if not path.name.startswith("legacy-")
    }


def table_counts(conn: store.Connection) -> dict[str, Any]:
    """Row counts and a checksum of every results table, to compare before and after."""
    out: dict[str, Any] = {}
    for table in ("clusters", "workloads", "containers", "images", "scans", "vulnerabilities",
                  "findings"):  # fmt: skip
        row = conn.execute(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
            f" FROM {table} t"
        ).fetchone()
        assert row is not None
        out[table] = (row[0], row[1])
    return out


# ------------------------------------------------------------- a small inventory

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
WEB_OLD = "sha256:" + "0" * 64  # team/web before the rebuild: python-slim report
WEB = "sha256:" + "1" * 64  # team/web now: python-debian-12 report (212)
API = "sha256:" + "2" * 64  # team/api: ecr report (29), then node report (7), then a failure
DB = "sha256:" + "3" * 64  # never scanned
JOB = "sha256:" + "4" * 64  # scan refused
REGISTRY = "registry.example.com:5000"


def container(
    cluster: str, namespace: str, kind: str, workload: str, pod: str, image: str,
    digest: str | None, *, container: str = "main", at: datetime = T0,
) -> store.ContainerRow:  # fmt: skip
    return store.ContainerRow(
        cluster=cluster,
        namespace=namespace,
        workload_kind=kind,
        workload_name=workload,
        pod=pod,
        container=container,
        container_type="app",
        image=image,
        digest=digest,
        node="node-1",
        seen_at=at,
    )


def scan(
    conn: store.Connection, scan_id: str, digest: str, repository: str, cluster: str,
    report: reports.Report | None, at: datetime, *, reason: str = "",
) -> None:  # fmt: skip
    store.start_scan(
        conn,
        scan_id=scan_id,
        cluster=cluster,
        digest=digest,
        image=f"{REGISTRY}/{repository}@{digest}",
        mode="registry",
        attempt=1,
        credential_source=f"{cluster}/regcred",
        started_at=at,
    )
    if report is None:
        store.fail_scan(conn, scan_id=scan_id, status="refused", reason=reason, finished_at=at)
    else:
        store.finish_scan(conn, scan_id=scan_id, report=report, finished_at=at)


def build_inventory(conn: store.Connection, trivy: dict[str, reports.Report]) -> None:
    """Two clusters, three namespaces, five workloads; see the digests above for what ran.

    prod-eu/team-a: Deployment web (3 pods, WEB), StatefulSet db (DB, never scanned)
    prod-eu/team-b: Deployment api (2 pods, API), CronJob nightly (JOB, refused)
    prod-us/team-a: Deployment web (1 pod, WEB; one more pod whose digest is not known yet)
    Gone: a prod-eu web pod that ran WEB_OLD.
    """
    web, api = f"{REGISTRY}/team/web:2", f"{REGISTRY}/team/api:1"
    rows = [
        *(container("prod-eu", "team-a", "Deployment", "web", f"web-{i}", web, WEB)
          for i in range(3)),
        container("prod-eu", "team-a", "StatefulSet", "db", "db-0", f"{REGISTRY}/team/db:1", DB),
        *(container("prod-eu", "team-b", "Deployment", "api", f"api-{i}", api, API)
          for i in range(2)),
        container("prod-eu", "team-b", "CronJob", "nightly", "nightly-1",
                  f"{REGISTRY}/team/job:1", JOB),
        container("prod-eu", "team-a", "Deployment", "web", "web-old", f"{REGISTRY}/team/web:1",
                  WEB_OLD, at=T0 - timedelta(days=3)),
    ]  # fmt: skip
    store.record_containers(conn, rows)
    store.forget_pods(conn, cluster="prod-eu", namespace="team-a", pods=["web-old"], at=T0)
    store.record_containers(
        conn,
        [
            container("prod-us", "team-a", "Deployment", "web", "web-us-0", web, WEB),
            container("prod-us", "team-a", "Deployment", "web", "web-us-1", web, None),
        ],
    )
    day = timedelta(days=1)
    scan(conn, "s-web-old", WEB_OLD, "team/web", "prod-eu", trivy["python-slim-debian-13"],
         T0 - 3 * day)  # fmt: skip
    scan(conn, "s-web", WEB, "team/web", "prod-us", trivy["python-debian-12-bom-crlf"], T0 - day)
    scan(conn, "s-api-1", API, "team/api", "prod-eu", trivy["ecr-private-alpine-3.19"],
         T0 - 2 * day)  # fmt: skip
    scan(conn, "s-api-2", API, "team/api", "prod-eu", trivy["node-alpine-3.19"], T0 - day)
    scan(conn, "s-api-3", API, "team/api", "prod-eu", None, T0, reason="registry timed out")
    scan(conn, "s-job", JOB, "team/job", "prod-eu", None, T0,
         reason="registry.example.com:5000 refused every credential (prod-eu/regcred)")  # fmt: skip
