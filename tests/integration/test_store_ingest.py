"""Scan lifecycle and report ingest against a real PostgreSQL (fresh migrated database per test)."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta

import pytest

from scanqueue import errors, reports, store
from tests.support.results_fixtures import table_counts

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
IMAGE_A = f"registry.example.com:5000/team/app@{DIGEST_A}"


def _start(
    conn: store.Connection,
    scan_id: str = "scan-1",
    *,
    digest: str = DIGEST_A,
    image: str = IMAGE_A,
    cluster: str = "prod-eu",
    attempt: int = 1,
    mode: str = "registry",
    credential_source: str | None = "team-a/regcred",
    at: datetime = T0,
) -> None:
    store.start_scan(
        conn,
        scan_id=scan_id,
        cluster=cluster,
        digest=digest,
        image=image,
        mode=mode,
        attempt=attempt,
        credential_source=credential_source,
        started_at=at,
    )


def test_finished_scan_stores_every_finding_and_its_counts(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["python-debian-12-bom-crlf"]
    _start(store_conn)
    store.finish_scan(store_conn, scan_id="scan-1", report=report, finished_at=T0 + timedelta(1))
    by_severity = dict(
        store_conn.execute(
            "SELECT severity, count(*) FROM findings WHERE scan_id = 'scan-1' GROUP BY 1"
        ).fetchall()
    )
    assert by_severity == report.by_severity()
    scan = store.get_scan(store_conn, "scan-1")
    assert scan is not None
    assert (scan.status, scan.findings, scan.scanner_version) == ("succeeded", 212, "0.74.0")
    assert scan.cluster == "prod-eu" and scan.credential_source == "team-a/regcred"
    image = store_conn.execute(
        "SELECT registry, repository, os_family, os_name FROM images WHERE digest = %s",
        (DIGEST_A,),
    ).fetchone()
    assert image == ("registry.example.com:5000", "team/app", "debian", "12.15")
    vulns = store_conn.execute("SELECT count(*) FROM vulnerabilities").fetchone()
    assert vulns == (len(report.vulnerabilities),)


def test_ingesting_the_same_report_twice_leaves_the_same_rows(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["ecr-private-alpine-3.19"]
    _start(store_conn)
    store.finish_scan(store_conn, scan_id="scan-1", report=report, finished_at=T0)
    before = table_counts(store_conn)
    _start(store_conn)  # the task is redelivered from the start
    store.finish_scan(store_conn, scan_id="scan-1", report=report, finished_at=T0 + timedelta(1))
    assert table_counts(store_conn) == before


def test_second_scan_of_other_image_shares_vulnerability_rows(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    debian = trivy_reports["python-debian-12-bom-crlf"]
    slim = trivy_reports["python-slim-debian-13"]
    _start(store_conn, "scan-1")
    store.finish_scan(store_conn, scan_id="scan-1", report=debian, finished_at=T0)
    _start(store_conn, "scan-2", digest=DIGEST_B, image=f"docker.io/library/python@{DIGEST_B}")
    store.finish_scan(store_conn, scan_id="scan-2", report=slim, finished_at=T0)
    ids = {v.id for v in debian.vulnerabilities} | {v.id for v in slim.vulnerabilities}
    assert store_conn.execute("SELECT count(*) FROM vulnerabilities").fetchone() == (len(ids),)
    assert store_conn.execute("SELECT count(*) FROM findings").fetchone() == (212 + 128,)


def test_newer_advisory_text_updates_the_vulnerability_row(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["node-alpine-3.19"]
    first = report.findings[0]
    _start(store_conn, "scan-1")
    store.finish_scan(store_conn, scan_id="scan-1", report=report, finished_at=T0)
    newer_vuln = dataclasses.replace(
        first.vulnerability,
        title="updated title",
        severity="CRITICAL",
        modified_at=datetime(2030, 1, 1, tzinfo=UTC),
    )
    newer = dataclasses.replace(
        report,
        results=(
            reports.Result(
                "t", "os-pkgs", "alpine", (dataclasses.replace(first, vulnerability=newer_vuln),)
            ),
        ),
    )
    _start(store_conn, "scan-2", digest=DIGEST_B)
    store.finish_scan(store_conn, scan_id="scan-2", report=newer, finished_at=T0)
    row = store_conn.execute(
        "SELECT title, severity FROM vulnerabilities WHERE id = %s", (first.vulnerability.id,)
    ).fetchone()
    assert row == ("updated title", "CRITICAL")
    # an older report does not overwrite it back
    _start(store_conn, "scan-3", digest=DIGEST_B)
    store.finish_scan(store_conn, scan_id="scan-3", report=report, finished_at=T0)
    row = store_conn.execute(
        "SELECT title FROM vulnerabilities WHERE id = %s", (first.vulnerability.id,)
    ).fetchone()
    assert row == ("updated title",)


def test_insert_baseline_writes_the_same_findings_as_one_statement(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["python-slim-debian-13"]
    _start(store_conn, "set")
    _start(store_conn, "insert", digest=DIGEST_B)
    store.finish_scan(store_conn, scan_id="set", report=report, finished_at=T0)
    store.finish_scan(
        store_conn, scan_id="insert", report=report, finished_at=T0, findings_via="insert"
    )
    query = """SELECT ordinal, vulnerability_id, package, installed_version, fixed_version,
                      status, severity, target, class, type, package_path
                 FROM findings WHERE scan_id = %s ORDER BY ordinal"""
    copied = store_conn.execute(query, ("set",)).fetchall()
    assert len(copied) == 128
    assert copied == store_conn.execute(query, ("insert",)).fetchall()


def test_failure_in_the_middle_of_ingest_leaves_nothing(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["node-alpine-3.19"]
    bad = dataclasses.replace(report.findings[-1], package="x\x00y")  # NUL: Postgres refuses
    broken = dataclasses.replace(
        report, results=(*report.results, reports.Result("t", None, None, (bad,)))
    )
    _start(store_conn)
    store_conn.commit()
    before = table_counts(store_conn)
    with pytest.raises(errors.PermanentError, match=r"Postgres refused store\.finish_scan"):
        store.finish_scan(store_conn, scan_id="scan-1", report=broken, finished_at=T0)
    store_conn.rollback()
    assert table_counts(store_conn) == before
    scan = store.get_scan(store_conn, "scan-1")
    assert scan is not None and scan.status == "running"


def test_finish_of_unknown_scan_names_it(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    with pytest.raises(errors.PermanentError, match="scan nope is not recorded"):
        store.finish_scan(
            store_conn, scan_id="nope", report=trivy_reports["node-alpine-3.19"], finished_at=T0
        )


def test_failed_scan_keeps_its_reason_and_is_not_reopened_by_redelivery(
    store_conn: store.Connection,
) -> None:
    _start(store_conn)
    reason = "registry.example.com:5000 refused team-a/regcred: UNAUTHORIZED"
    store.fail_scan(store_conn, scan_id="scan-1", status="refused", reason=reason, finished_at=T0)
    _start(store_conn)  # same attempt redelivered
    store.fail_scan(store_conn, scan_id="scan-1", status="failed", reason="other", finished_at=T0)
    scan = store.last_scan(store_conn, DIGEST_A)
    assert scan is not None
    assert (scan.status, scan.error, scan.finished_at) == ("refused", reason, T0)


def test_next_attempt_restarts_a_failed_scan_with_its_own_credential_source(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    _start(store_conn)
    store.fail_scan(store_conn, scan_id="scan-1", status="refused", reason="401", finished_at=T0)
    _start(store_conn, attempt=2, credential_source="team-a/other", at=T0 + timedelta(minutes=1))
    scan = store.get_scan(store_conn, "scan-1")
    assert scan is not None
    assert (scan.status, scan.attempt, scan.credential_source, scan.error) == (
        "running",
        2,
        "team-a/other",
        None,
    )
    store.finish_scan(
        store_conn, scan_id="scan-1", report=trivy_reports["node-alpine-3.19"], finished_at=T0
    )
    _start(store_conn, attempt=3)  # a late duplicate never reopens a success
    scan = store.get_scan(store_conn, "scan-1")
    assert scan is not None and (scan.status, scan.attempt) == ("succeeded", 2)


def test_fail_scan_refuses_a_non_failure_status(store_conn: store.Connection) -> None:
    _start(store_conn)
    with pytest.raises(errors.PermanentError, match="expected one of failed, timeout, refused"):
        store.fail_scan(store_conn, scan_id="scan-1", status="succeeded", reason="", finished_at=T0)


def test_bad_image_reference_still_records_a_failed_scan(store_conn: store.Connection) -> None:
    _start(store_conn, image="Not A Reference!!")
    store.fail_scan(
        store_conn,
        scan_id="scan-1",
        status="failed",
        reason="image reference 'Not A Reference!!' is invalid",
        finished_at=T0,
    )
    scan = store.last_scan(store_conn, DIGEST_A)
    assert scan is not None and scan.status == "failed"


def test_malformed_digest_is_a_permanent_error_naming_the_scan(
    store_conn: store.Connection,
) -> None:
    with pytest.raises(errors.PermanentError, match="scan scan-x: refused by the database"):
        _start(store_conn, "scan-x", digest="sha256 is not a digest")


def test_fresh_digests_are_those_scanned_successfully_since(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["node-alpine-3.19"]
    digest_c = "sha256:" + "c" * 64
    _start(store_conn, "old", digest=DIGEST_A)
    store.finish_scan(store_conn, scan_id="old", report=report, finished_at=T0)
    _start(store_conn, "new", digest=DIGEST_B)
    store.finish_scan(store_conn, scan_id="new", report=report, finished_at=T0 + timedelta(2))
    _start(store_conn, "failed", digest=digest_c)
    store.fail_scan(
        store_conn, scan_id="failed", status="timeout", reason="", finished_at=T0 + timedelta(2)
    )
    since = T0 + timedelta(1)
    assert store.fresh_digests(store_conn, [DIGEST_A, DIGEST_B, digest_c], since=since) == {
        DIGEST_B
    }
    assert store.fresh_digests(store_conn, [], since=since) == set()
    assert store.fresh_digests(store_conn, [DIGEST_A], since=T0) == {DIGEST_A}


def test_last_scan_is_the_most_recently_started(store_conn: store.Connection) -> None:
    assert store.last_scan(store_conn, DIGEST_A) is None
    _start(store_conn, "first", at=T0)
    _start(store_conn, "second", at=T0 + timedelta(hours=1), cluster="prod-us")
    scan = store.last_scan(store_conn, DIGEST_A)
    assert scan is not None and (scan.id, scan.cluster, scan.status) == (
        "second",
        "prod-us",
        "running",
    )


def test_retention_keeps_the_last_scans_and_the_latest_success(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["node-alpine-3.19"]
    _start(store_conn, "ok-0", at=T0)
    store.finish_scan(store_conn, scan_id="ok-0", report=report, finished_at=T0)
    _start(store_conn, "ok-1", at=T0 + timedelta(1))
    store.finish_scan(store_conn, scan_id="ok-1", report=report, finished_at=T0 + timedelta(1))
    for i in range(2, 5):
        _start(store_conn, f"fail-{i}", at=T0 + timedelta(i))
        store.fail_scan(
            store_conn, scan_id=f"fail-{i}", status="failed", reason="x",
            finished_at=T0 + timedelta(i),
        )  # fmt: skip
    _start(store_conn, "running", at=T0 + timedelta(9))
    _start(store_conn, "other", digest=DIGEST_B, at=T0)
    store.finish_scan(store_conn, scan_id="other", report=report, finished_at=T0)

    assert store.prune_scans(store_conn, keep=2) == 2  # ok-0 and fail-2 go
    left = {r[0] for r in store_conn.execute("SELECT id FROM scans").fetchall()}
    assert left == {"ok-1", "fail-3", "fail-4", "running", "other"}
    orphans = store_conn.execute(
        "SELECT count(*) FROM findings WHERE scan_id NOT IN (SELECT id FROM scans)"
    ).fetchone()
    assert orphans == (0,)
    assert store.prune_scans(store_conn, keep=2) == 0
    with pytest.raises(errors.PermanentError, match="keep at least 1"):
        store.prune_scans(store_conn, keep=0)


def test_import_report_is_a_succeeded_import_scan_and_idempotent(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["node-alpine-3.19"]
    image = f"javaneseivankov/poros-week1-web:1.0.0@{DIGEST_A}"
    scan_id = store.import_report(store_conn, cluster="ci", image=image, report=report, at=T0)
    before = table_counts(store_conn)
    again = store.import_report(
        store_conn, cluster="ci", image=image, report=report, at=T0 + timedelta(1)
    )
    assert again == scan_id
    assert table_counts(store_conn) == before
    scan = store.get_scan(store_conn, scan_id)
    assert scan is not None
    assert (scan.mode, scan.status, scan.findings, scan.credential_source) == (
        "import",
        "succeeded",
        7,
        None,
    )
    assert scan.image == f"docker.io/javaneseivankov/poros-week1-web:1.0.0@{DIGEST_A}"
    assert scan.finished_at == report.created_at


def test_import_of_unpinned_image_is_refused(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    with pytest.raises(errors.PermanentError, match="not pinned by digest"):
        store.import_report(
            store_conn,
            cluster="ci",
            image="nginx:1.25",
            report=trivy_reports["node-alpine-3.19"],
            at=T0,
        )


def test_pool_connections_share_one_database(
    database_url: str, trivy_reports: dict[str, reports.Report]
) -> None:
    p = store.pool(database_url, min_size=1, max_size=2)
    try:
        with p.connection() as conn:
            _start(conn)
            store.finish_scan(
                conn, scan_id="scan-1", report=trivy_reports["node-alpine-3.19"], finished_at=T0
            )
        with p.connection() as conn:
            scan = store.get_scan(conn, "scan-1")
        assert scan is not None and scan.findings == 7
    finally:
        p.close()


def test_unreachable_pool_is_a_temporary_error_without_password() -> None:
    with pytest.raises(errors.TemporaryError, match="cannot open a Postgres pool") as caught:
        store.pool("postgresql://u:pool-canary-pw@127.0.0.1:1/db", timeout=1)
    assert "pool-canary-pw" not in str(caught.value)


def test_scan_failing_before_its_digest_is_known_is_still_recorded(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    _start(store_conn, "no-digest", digest="", image="registry.example.com/team/app:1@")
    assert store.running_scans(store_conn, cluster="prod-eu", before=T0 + timedelta(1)) == [
        ("no-digest", "")
    ]
    with pytest.raises(errors.PermanentError, match="has no image digest"):
        store.finish_scan(
            store_conn,
            scan_id="no-digest",
            report=trivy_reports["node-alpine-3.19"],
            finished_at=T0,
        )
    store.fail_scan(
        store_conn,
        scan_id="no-digest",
        status="refused",
        reason="no credential resolved registry.example.com/team/app:1 to a digest",
        finished_at=T0,
    )
    scan = store.get_scan(store_conn, "no-digest")
    assert scan is not None and (scan.digest, scan.status) == ("", "refused")
    assert store_conn.execute("SELECT count(*) FROM images").fetchone() == (0,)


def test_running_scans_are_those_of_the_cluster_started_before(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    _start(store_conn, "old", at=T0)
    _start(store_conn, "new", digest=DIGEST_B, at=T0 + timedelta(hours=2))
    _start(store_conn, "elsewhere", cluster="prod-us", at=T0)
    _start(store_conn, "done", digest=DIGEST_B, at=T0)
    store.finish_scan(
        store_conn, scan_id="done", report=trivy_reports["node-alpine-3.19"], finished_at=T0
    )
    cutoff = T0 + timedelta(hours=1)
    assert store.running_scans(store_conn, cluster="prod-eu", before=cutoff) == [("old", DIGEST_A)]


def test_oci_digest_of_another_algorithm_is_accepted(store_conn: store.Connection) -> None:
    digest = "sha512:" + "e" * 128
    _start(store_conn, "sha512", digest=digest, image=f"registry.example.com/team/app@{digest}")
    scan = store.last_scan(store_conn, digest)
    assert scan is not None and scan.digest == digest


def test_lost_connection_is_a_temporary_error(database_url: str) -> None:
    with store.connect(database_url) as conn:
        conn.close()
        with pytest.raises(errors.TemporaryError, match=r"store\.last_scan"):
            store.last_scan(conn, DIGEST_A)


def test_concurrent_deliveries_of_one_result_store_it_once(
    database_url: str, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["python-slim-debian-13"]
    with store.connect(database_url) as conn:
        _start(conn)
    barrier = threading.Barrier(4)
    failures: list[BaseException] = []

    def deliver() -> None:
        try:
            with store.connect(database_url) as conn:
                barrier.wait()
                store.finish_scan(conn, scan_id="scan-1", report=report, finished_at=T0)
        except BaseException as e:  # collected and asserted below
            failures.append(e)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    with store.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM findings").fetchone() == (128,)


def test_concurrent_ingests_sharing_advisories_do_not_deadlock(
    database_url: str, trivy_reports: dict[str, reports.Report]
) -> None:
    # the same advisories, listed in opposite orders by two reports
    forward = trivy_reports["python-debian-12-bom-crlf"]
    backward = dataclasses.replace(
        forward,
        results=tuple(
            dataclasses.replace(r, findings=r.findings[::-1]) for r in forward.results[::-1]
        ),
    )
    chosen = [forward, backward]
    barrier = threading.Barrier(4)
    failures: list[BaseException] = []

    def ingest(worker: int) -> None:
        try:
            with store.connect(database_url) as conn:
                barrier.wait()
                for i in range(5):
                    digest = f"sha256:{worker:032x}{i:032x}"  # a new image each time
                    _start(conn, f"w{worker}-{i}", digest=digest)
                    store.finish_scan(
                        conn, scan_id=f"w{worker}-{i}", report=chosen[worker % 2], finished_at=T0
                    )
        except BaseException as e:  # collected and asserted below
            failures.append(e)

    threads = [threading.Thread(target=ingest, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    with store.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM findings").fetchone() == (20 * 212,)


def test_advisories_already_stored_are_left_out_of_the_next_ingest(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    from scanqueue.store import results

    debian = trivy_reports["python-debian-12-bom-crlf"]
    slim = trivy_reports["python-slim-debian-13"]
    _start(store_conn, "scan-1")
    store.finish_scan(store_conn, scan_id="scan-1", report=debian, finished_at=T0)
    # this process stored them: a report sharing some sends only the others
    assert results._STORED.unknown(store_conn, debian.vulnerabilities) == []
    shared = {v.id for v in debian.vulnerabilities} & {v.id for v in slim.vulnerabilities}
    assert shared
    sent = results._STORED.unknown(store_conn, slim.vulnerabilities)
    assert {v.id for v in sent} == {v.id for v in slim.vulnerabilities} - shared
    # an advisory whose text changed is sent again, and stored (newer modification time)
    first = debian.findings[0].vulnerability
    changed = dataclasses.replace(
        first, title="reworded", modified_at=datetime(2031, 1, 1, tzinfo=UTC)
    )
    assert results._STORED.unknown(store_conn, [changed]) == [changed]
    changed_cvss = dataclasses.replace(first, cvss={"nvd": {"V3Score": 1.0}})
    assert results._STORED.unknown(store_conn, [changed_cvss]) == [changed_cvss]


def test_an_advisory_remembered_as_stored_but_gone_is_stored_again(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["node-alpine-3.19"]
    _start(store_conn, "scan-1")
    store.finish_scan(store_conn, scan_id="scan-1", report=report, finished_at=T0)
    store_conn.commit()
    # by hand: the scan and its findings, then the advisories no finding refers to any more
    store_conn.execute("DELETE FROM scans WHERE id = 'scan-1'")
    store_conn.execute("DELETE FROM vulnerabilities")
    store_conn.commit()
    _start(store_conn, "scan-2", digest=DIGEST_B)
    store.finish_scan(store_conn, scan_id="scan-2", report=report, finished_at=T0)
    store_conn.commit()
    counts = store_conn.execute(
        "SELECT (SELECT count(*) FROM vulnerabilities), (SELECT count(*) FROM findings)"
    ).fetchone()
    assert counts == (len(report.vulnerabilities), len(report.findings))
    scan = store.get_scan(store_conn, "scan-2")
    assert scan is not None and scan.status == "succeeded"


def test_advisories_of_a_rolled_back_ingest_are_stored_by_the_next(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["node-alpine-3.19"]
    _start(store_conn, "scan-1")
    store.finish_scan(store_conn, scan_id="scan-1", report=report, finished_at=T0)
    store_conn.rollback()  # the caller's transaction: nothing of it stays
    _start(store_conn, "scan-1")
    store.finish_scan(store_conn, scan_id="scan-1", report=report, finished_at=T0)
    store_conn.commit()
    assert store_conn.execute("SELECT count(*) FROM vulnerabilities").fetchone() == (
        len(report.vulnerabilities),
    )
