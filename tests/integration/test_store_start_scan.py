"""``store.start_scan`` against a real Postgres: one statement, and the race it cannot see.

It records a scan (its cluster and image rows created if new) in one statement. A
statement sees the database as it was when it began, so a cluster row that another
transaction inserts and commits meanwhile is invisible to it: it must then still
record the scan (the statement-per-step way), not drop it. Also what an upsert must
keep: the same attempt changes nothing, a higher one restarts the row, a succeeded
scan is never reopened; and the seconds a scan took, for the duration metric.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from scanqueue import reports, store

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DIGEST = "sha256:" + "c" * 64


def _start(conn: store.Connection, scan_id: str, *, cluster: str = "c1", attempt: int = 1,
           at: datetime = T0, source: str | None = None) -> None:  # fmt: skip
    store.start_scan(
        conn, scan_id=scan_id, cluster=cluster, digest=DIGEST,
        image=f"registry.example.com/team/app@{DIGEST}", mode="registry", attempt=attempt,
        credential_source=source, started_at=at,
    )  # fmt: skip


def _row(conn: store.Connection, scan_id: str) -> tuple[object, ...]:
    row = conn.execute(
        """SELECT c.name, s.status, s.attempt, s.started_at, s.credential_source
             FROM scans s JOIN clusters c ON c.id = s.cluster_id WHERE s.id = %s""",
        (scan_id,),
    ).fetchone()
    assert row is not None, f"scan {scan_id} was not recorded"
    return tuple(row)


def test_a_scan_of_a_cluster_inserted_by_a_concurrent_transaction_is_recorded(
    database_url: str,
) -> None:
    with store.connect(database_url) as inserter, store.connect(database_url) as starter:
        inserter.execute("INSERT INTO clusters (name) VALUES ('new')")  # not committed yet
        failures: list[BaseException] = []

        def start() -> None:
            try:
                _start(starter, "s1", cluster="new")
                starter.commit()
            except BaseException as e:  # asserted below
                failures.append(e)

        thread = threading.Thread(target=start)
        thread.start()
        deadline = time.monotonic() + 10
        while inserter.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
            (starter.info.backend_pid,),
        ).fetchone() != (1,):
            assert time.monotonic() < deadline, "start_scan never waited for the cluster insert"
            time.sleep(0.02)
        inserter.commit()
        thread.join(10)
        assert failures == []
        assert _row(inserter, "s1")[:3] == ("new", "running", 1)
        assert inserter.execute("SELECT count(*) FROM clusters WHERE name = 'new'").fetchone() == (
            1,
        )


def test_the_same_attempt_changes_nothing_a_higher_one_restarts_a_success_stays(
    store_conn: store.Connection, trivy_reports: dict[str, reports.Report]
) -> None:
    later = T0 + timedelta(minutes=5)
    _start(store_conn, "s1", source="team-a/regcred (registry.example.com)")
    _start(store_conn, "s1", at=later, source="team-a/regcred (registry.example.com)")
    assert _row(store_conn, "s1")[1:] == (
        "running", 1, T0, "team-a/regcred (registry.example.com)"
    )  # fmt: skip
    _start(store_conn, "s1", attempt=2, at=later, source="team-a/other (registry.example.com)")
    assert _row(store_conn, "s1")[1:] == (
        "running", 2, later, "team-a/other (registry.example.com)"
    )  # fmt: skip
    assert store.scan_seconds(store_conn, "s1") is None  # still running
    # the ingest says how long the scan took (what the row's times then say), once
    took = store.finish_scan(store_conn, scan_id="s1", report=trivy_reports["node-alpine-3.19"],
                             finished_at=later + timedelta(seconds=90))  # fmt: skip
    assert took == 90.0
    again = store.finish_scan(store_conn, scan_id="s1", report=trivy_reports["node-alpine-3.19"],
                              finished_at=later + timedelta(seconds=500))  # fmt: skip
    assert again is None  # succeeded already: left as it was
    _start(store_conn, "s1", attempt=3, at=later + timedelta(minutes=1))
    assert _row(store_conn, "s1")[1:3] == ("succeeded", 2)
    assert store.scan_seconds(store_conn, "s1") == 90.0
    assert store.scan_seconds(store_conn, "nope") is None
