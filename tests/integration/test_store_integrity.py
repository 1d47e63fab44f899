"""What the findings' foreign keys guaranteed still holds without them (migrations 0004, 0008-9).

Findings are checked once per statement instead of twice per row: no finding
without its scan and its advisory, whoever writes it; deleting scans (directly,
by retention, or with their cluster or image) deletes their findings; an
advisory in use cannot be deleted; the keys cannot change; TRUNCATE cannot
leave findings behind; and a delete racing an insert leaves no orphan. Also the
edges of the one-statement ingest: separators inside values, empty strings,
NULLs, one finding, none.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest

from scanqueue import errors, reports, store

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
COLUMNS = """vulnerability_id, package, installed_version, fixed_version, status, severity,
             target, class, type, package_path"""


def _start(
    conn: store.Connection, scan_id: str, digest: str = DIGEST_A, cluster: str = "c1"
) -> None:
    store.start_scan(
        conn, scan_id=scan_id, cluster=cluster, digest=digest,
        image=f"registry.example.com/team/app@{digest}", mode="registry", attempt=1,
        credential_source=None, started_at=T0,
    )  # fmt: skip


def _stored(conn: store.Connection, report: reports.Report, scan_id: str = "s1") -> None:
    _start(conn, scan_id)
    store.finish_scan(conn, scan_id=scan_id, report=report, finished_at=T0)
    conn.commit()


def _insert_finding(conn: store.Connection, scan_id: str, ordinal: int, advisory: str) -> None:
    conn.execute(
        """INSERT INTO findings (scan_id, ordinal, vulnerability_id, package, severity, target)
           VALUES (%s, %s, %s, 'openssl', 'HIGH', 'app')""",
        (scan_id, ordinal, advisory),
    )


def _count(conn: store.Connection, query: str, *params: object) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def _waiting_for_a_lock(conn: store.Connection, pid: int) -> bool:
    return _count(
        conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
        pid,
    ) == 1  # fmt: skip


def test_a_finding_without_its_scan_is_refused(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["node-alpine-3.19"]
    _stored(store_conn, report)
    advisory = report.findings[0].vulnerability.id
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="scan nope: the scan is not"):
        _insert_finding(store_conn, "nope", 0, advisory)
    store_conn.rollback()
    _insert_finding(store_conn, "s1", 100, advisory)  # its scan and advisory exist: accepted


def test_a_finding_without_its_advisory_is_refused_in_a_set(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["node-alpine-3.19"]
    _stored(store_conn, report)
    advisory = report.findings[0].vulnerability.id
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="advisory CVE-0000-1 is not"):
        store_conn.execute(
            """INSERT INTO findings (scan_id, ordinal, vulnerability_id, package, severity, target)
               SELECT 's1', 100 + n, CASE WHEN n = 7 THEN 'CVE-0000-1' ELSE %s END, 'p', 'LOW', 't'
                 FROM generate_series(0, 9) AS n""",
            (advisory,),
        )
    store_conn.rollback()
    assert _count(store_conn, "SELECT count(*) FROM findings") == len(report.findings)


def test_a_set_that_lacks_a_scan_or_an_advisory_is_refused_naming_it(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    # 0009 looks each distinct scan, then each distinct advisory, up once: one orphan among
    # many findings is named, its scan first
    report = trivy_reports["node-alpine-3.19"]
    _stored(store_conn, report)
    _start(store_conn, "s2", DIGEST_B)
    store_conn.commit()
    advisory = report.findings[0].vulnerability.id
    rows = """INSERT INTO findings (scan_id, ordinal, vulnerability_id, package, severity, target)
              SELECT CASE WHEN n %% 2 = 0 THEN 's1' ELSE %s END, 100 + n,
                     CASE WHEN n = 7 THEN 'CVE-0000-2' ELSE %s END, 'p', 'LOW', 't'
                FROM generate_series(0, 9) AS n"""
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as raised:
        store_conn.execute(rows, ("nope", advisory))
    assert str(raised.value).startswith("finding of scan nope: the scan is not recorded")
    store_conn.rollback()
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as raised:
        store_conn.execute(rows, ("s2", advisory))
    assert str(raised.value).startswith("finding of scan s2: advisory CVE-0000-2 is not stored")
    assert raised.value.diag.message_hint == "store the advisories of a report before its findings"
    store_conn.rollback()
    assert _count(store_conn, "SELECT count(*) FROM findings") == len(report.findings)


def _table_scans(conn: store.Connection) -> dict[str, tuple[int, int]]:
    """(sequential scans, index scans) of scans and vulnerabilities in this transaction."""
    rows = conn.execute(
        """SELECT relname, seq_scan, coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables
            WHERE relname IN ('scans', 'vulnerabilities')"""
    ).fetchall()
    return {name: (seq, idx) for name, seq, idx in rows}


def test_the_check_looks_references_up_by_index_whatever_size_the_first_insert_had(
    store_conn: store.Connection,
) -> None:
    # 0009: PL/pgSQL keeps the check's plan for the connection. 0004's was planned for the
    # first insert's size: after a large one, every later insert read both tables whole.
    _start(store_conn, "s1")
    store_conn.execute(  # tables large enough that reading one whole is not the way
        """INSERT INTO scans (id, digest, cluster_id, image, status, mode, started_at,
                              finished_at)
           SELECT format('old-%s', g), digest, cluster_id, image, 'succeeded', mode,
                  started_at, started_at
             FROM scans, generate_series(1, 5000) AS g WHERE id = 's1'"""
    )
    store_conn.execute(
        """INSERT INTO vulnerabilities (id, severity)
           SELECT format('CVE-2000-%s', g), 'LOW' FROM generate_series(1, 5000) AS g"""
    )
    store_conn.execute("ANALYZE scans, vulnerabilities")
    store_conn.execute(
        f"""INSERT INTO findings (scan_id, ordinal, {COLUMNS})
            SELECT 's1', g, format('CVE-2000-%s', g), 'p', '', '', NULL, 'LOW', 't', NULL, NULL,
                   '' FROM generate_series(1, 4000) AS g"""
    )  # the connection's first insert into findings: a large one
    before = _table_scans(store_conn)
    _insert_finding(store_conn, "s1", 0, "CVE-2000-1")
    after = _table_scans(store_conn)
    for table in ("scans", "vulnerabilities"):
        assert after[table][0] == before[table][0], f"{table} read whole by a one-row insert"
        assert after[table][1] > before[table][1], f"{table} not looked up by index"


def test_a_findings_scan_and_advisory_cannot_change(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["node-alpine-3.19"]
    _stored(store_conn, report)
    _stored(store_conn, report, "s2")
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="cannot change"):
        store_conn.execute("UPDATE findings SET scan_id = 's2' WHERE scan_id = 's1'")
    store_conn.rollback()
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="cannot change"):
        store_conn.execute("UPDATE findings SET vulnerability_id = 'CVE-0000-1' WHERE ordinal = 0")
    store_conn.rollback()
    store_conn.execute("UPDATE findings SET status = 'fixed' WHERE ordinal = 0")  # allowed
    for table, key in (("scans", "s1"), ("vulnerabilities", report.findings[0].vulnerability.id)):
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match=rf"{table}\.id cannot change"):
            store_conn.execute(f"UPDATE {table} SET id = 'other' WHERE id = %s", (key,))
        store_conn.rollback()


def test_deleting_scans_deletes_their_findings_however_they_go(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["node-alpine-3.19"]
    n = len(report.findings)
    for scan_id, digest, cluster in (("s1", DIGEST_A, "c1"), ("s2", DIGEST_B, "c1"),
                                     ("s3", DIGEST_A, "c2"), ("s4", DIGEST_A, "c1")):  # fmt: skip
        _start(store_conn, scan_id, digest, cluster)
        store.finish_scan(store_conn, scan_id=scan_id, report=report, finished_at=T0)
    store_conn.commit()
    assert _count(store_conn, "SELECT count(*) FROM findings") == 4 * n
    store_conn.execute("DELETE FROM scans WHERE id = 's4'")  # directly
    assert _count(store_conn, "SELECT count(*) FROM findings") == 3 * n
    store_conn.execute("DELETE FROM clusters WHERE name = 'c2'")  # with the cluster: s3
    assert _count(store_conn, "SELECT count(*) FROM findings WHERE scan_id = 's3'") == 0
    store_conn.execute("DELETE FROM images WHERE digest = %s", (DIGEST_B,))  # with the image: s2
    assert _count(store_conn, "SELECT count(*) FROM findings WHERE scan_id = 's2'") == 0
    store_conn.commit()
    assert _count(store_conn, "SELECT count(*) FROM findings") == n
    orphans = """SELECT count(*) FROM findings f
                  WHERE NOT EXISTS (SELECT 1 FROM scans s WHERE s.id = f.scan_id)
                     OR NOT EXISTS (SELECT 1 FROM vulnerabilities v
                                     WHERE v.id = f.vulnerability_id)"""
    assert _count(store_conn, orphans) == 0


def test_an_advisory_in_use_cannot_be_deleted_an_unused_one_can(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["node-alpine-3.19"]
    _stored(store_conn, report)
    used = report.findings[0].vulnerability.id
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match=f"advisory {used} is still"):
        store_conn.execute("DELETE FROM vulnerabilities WHERE id = %s", (used,))
    store_conn.rollback()
    store_conn.execute("DELETE FROM scans WHERE id = 's1'")
    store_conn.execute("DELETE FROM vulnerabilities WHERE id = %s", (used,))  # unused now
    store_conn.commit()


def test_truncate_cannot_leave_findings_behind(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    _stored(store_conn, trivy_reports["node-alpine-3.19"])
    for table in ("scans", "vulnerabilities"):
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match=f"cannot truncate {table}"):
            store_conn.execute(f"TRUNCATE {table} CASCADE")
        store_conn.rollback()
    store_conn.execute("TRUNCATE scans, vulnerabilities, findings CASCADE")  # + alert_outbox
    store_conn.commit()


def _delete_while_inserting(
    database_url: str, *, finding: tuple[str, int, str], delete: str
) -> list[BaseException]:
    """Insert ``finding`` (scan, ordinal, advisory) without committing, run ``delete`` in
    another connection, wait until that delete waits for the insert, then commit the
    insert and let the delete finish. Returns what the delete raised."""
    with store.connect(database_url) as writer, store.connect(database_url) as deleter:
        _insert_finding(writer, *finding)  # not committed yet
        failures: list[BaseException] = []

        def run_delete() -> None:
            try:
                deleter.execute(delete)
                deleter.commit()
            except BaseException as e:  # the caller asserts on it
                failures.append(e)

        thread = threading.Thread(target=run_delete)
        thread.start()
        deadline = time.monotonic() + 10
        while not _waiting_for_a_lock(writer, deleter.info.backend_pid):
            assert time.monotonic() < deadline, "the delete never waited for the insert"
            time.sleep(0.02)
        writer.commit()
        thread.join(10)
        assert not thread.is_alive(), "the delete did not finish after the insert committed"
    return failures


def test_a_scan_deleted_while_its_findings_are_written_leaves_no_orphan(
    database_url: str, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["node-alpine-3.19"]
    advisory = report.findings[0].vulnerability.id
    with store.connect(database_url) as setup:
        _stored(setup, report)
        _start(setup, "s2")
        setup.commit()
    failures = _delete_while_inserting(
        database_url, finding=("s2", 0, advisory), delete="DELETE FROM scans WHERE id = 's2'"
    )
    assert failures == []
    with store.connect(database_url) as check:
        assert _count(check, "SELECT count(*) FROM findings WHERE scan_id = 's2'") == 0
        assert _count(check, "SELECT count(*) FROM scans WHERE id = 's2'") == 0


def test_an_advisory_deleted_while_a_finding_uses_it_is_refused(
    database_url: str, trivy_reports: dict[str, reports.Report]
) -> None:
    with store.connect(database_url) as setup:
        _start(setup, "s1")
        setup.execute("INSERT INTO vulnerabilities (id, severity) VALUES ('CVE-0000-1', 'LOW')")
        setup.commit()
    failures = _delete_while_inserting(
        database_url,
        finding=("s1", 0, "CVE-0000-1"),  # sees the advisory
        delete="DELETE FROM vulnerabilities WHERE id = 'CVE-0000-1'",
    )
    assert len(failures) == 1
    assert isinstance(failures[0], psycopg.errors.ForeignKeyViolation)
    with store.connect(database_url) as check:
        assert _count(check, "SELECT count(*) FROM vulnerabilities WHERE id = 'CVE-0000-1'") == 1


def test_the_guards_are_one_function_per_shape_with_the_hints_of_0004(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    functions = dict(
        store_conn.execute(
            """SELECT t.tgname, p.proname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
                WHERE NOT t.tgisinternal AND t.tgname IN (
                      'scans_delete_findings', 'vulnerabilities_keep_referenced',
                      'findings_references_are_fixed', 'scans_id_is_fixed',
                      'vulnerabilities_id_is_fixed')"""
        ).fetchall()
    )
    assert functions == {
        "scans_delete_findings": "findings_referenced_rows_deleted",
        "vulnerabilities_keep_referenced": "findings_referenced_rows_deleted",
        "findings_references_are_fixed": "refuse_update",
        "scans_id_is_fixed": "refuse_update",
        "vulnerabilities_id_is_fixed": "refuse_update",
    }
    report = trivy_reports["node-alpine-3.19"]
    _stored(store_conn, report)
    used = report.findings[0].vulnerability.id
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as raised:
        store_conn.execute("DELETE FROM vulnerabilities WHERE id = %s", (used,))
    assert str(raised.value).startswith(f"advisory {used} is still referenced by findings of s")
    assert (
        raised.value.diag.message_hint == "delete the scans that found it first (store.prune_scans)"
    )
    store_conn.rollback()
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as raised:
        store_conn.execute("UPDATE findings SET scan_id = 'x' WHERE ordinal = 0")
    assert str(raised.value).startswith("finding s1/0: its scan and advisory cannot change")
    assert raised.value.diag.message_hint == "store the scan again instead"
    store_conn.rollback()
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as raised:
        store_conn.execute("UPDATE scans SET id = 'x' WHERE id = 's1'")
    assert str(raised.value).startswith("scans.id cannot change (s1 -> x): findings refer to it")
    assert raised.value.diag.message_hint == "insert a new row instead"
    store_conn.rollback()


def _one_finding_report(base: reports.Report, **changes: object) -> reports.Report:
    finding = dataclasses.replace(base.findings[0], **changes)  # type: ignore[arg-type]
    result = reports.Result("t", None, None, (finding,))
    return dataclasses.replace(base, results=(result,))


@pytest.mark.parametrize(
    "changes",
    [
        {"package": "pkg\x1fwith a unit separator", "target": "\x1e"},
        {"fixed_version": "", "package_path": "", "status": None, "result_class": None},
        {"installed_version": "", "result_type": ""},
    ],
    ids=["separators in values", "empty strings and NULLs", "empty strings only"],
)
def test_any_value_is_stored_as_it_was(
    store_conn: store.Connection,
    trivy_reports: dict[str, reports.Report],
    changes: dict[str, object],
) -> None:
    report = _one_finding_report(trivy_reports["node-alpine-3.19"], **changes)
    _stored(store_conn, report)
    f = report.findings[0]
    expected = (f.vulnerability.id, f.package, f.installed_version, f.fixed_version, f.status,
                f.severity, f.target, f.result_class, f.result_type, f.package_path)  # fmt: skip
    rows = store_conn.execute(f"SELECT {COLUMNS} FROM findings WHERE scan_id = 's1'").fetchall()
    assert rows == [expected]


def test_a_report_without_findings_ends_its_scan(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    _stored(store_conn, dataclasses.replace(trivy_reports["node-alpine-3.19"], results=()))
    scan = store.get_scan(store_conn, "s1")
    assert scan is not None and (scan.status, scan.findings) == ("succeeded", 0)


def test_an_advisory_is_written_once_and_not_again_when_unchanged(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["python-debian-12-bom-crlf"]
    _stored(store_conn, report)
    first = store_conn.execute("SELECT id, xmin::text FROM vulnerabilities ORDER BY id").fetchall()
    _stored(store_conn, report, "s2")
    again = store_conn.execute("SELECT id, xmin::text FROM vulnerabilities ORDER BY id").fetchall()
    assert len(first) == len(report.vulnerabilities)
    assert again == first  # no row rewritten (a rewrite would change its xmin)


def test_a_connection_lost_during_the_ingest_is_a_temporary_error(
    database_url: str, trivy_reports: dict[str, reports.Report]
) -> None:
    # The one-statement ingest runs in autocommit and sets the connection back afterwards;
    # on a dead connection that must not turn the loss into a permanent failure.
    with store.connect(database_url) as conn, store.connect(database_url) as admin:
        _start(conn, "s1")
        conn.commit()
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        admin.commit()
        with pytest.raises(errors.TemporaryError, match=r"store\.finish_scan"):
            store.finish_scan(
                conn, scan_id="s1", report=trivy_reports["node-alpine-3.19"], finished_at=T0
            )
    with store.connect(database_url) as conn:
        scan = store.get_scan(conn, "s1")
        assert scan is not None and (scan.status, scan.findings) == ("running", 0)


def test_an_autocommit_connection_stores_a_report_that_others_see_at_once(
    database_url: str, trivy_reports: dict[str, reports.Report]
) -> None:
    report = trivy_reports["node-alpine-3.19"]
    with store.connect(database_url) as conn, store.connect(database_url) as other:
        conn.autocommit = True
        _start(conn, "s1")
        store.finish_scan(conn, scan_id="s1", report=report, finished_at=T0)
        assert conn.autocommit is True
        scan = store.get_scan(other, "s1")
        assert scan is not None and (scan.status, scan.findings) == ("succeeded", 7)
