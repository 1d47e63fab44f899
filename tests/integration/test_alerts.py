"""Alerts on new findings, end to end: real Postgres, a real Celery worker with beat, real HTTP.

Receivers on loopback capture every POST. One is down at first (nothing on
its port), one always answers 500, one answers slower than the timeout; the
farm must deliver to the first once it comes up, dead-letter the others after
their attempts, alert once per workload and scan, never twice for the same
finding on the same workload, and never put the planted password anywhere.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from scanqueue import processes, reports, roles, store
from scanqueue.store import alerts as alert_store
from scanqueue.store import overview
from tests.support import alert_fixtures as af
from tests.support import results_fixtures as inv
from tests.support import services
from tests.support.worker_fixtures import WorkerProcess

CANARY = "canary-Pw-7f3a91"  # planted in a webhook URL and an advisory title
D1 = "sha256:" + "a" * 64  # run by Deployments web and api
D2 = "sha256:" + "b" * 64  # run by StatefulSet db
REG = "registry.example.com:5000"

R1 = [
    af.vuln("CVE-2026-0001", "openssl", "CRITICAL", "3.1.7-r0", "3.1.8-r0",
            title=f"openssl: overflow; leaked config had password={CANARY}"),
    af.vuln("CVE-2026-0002", "busybox", "CRITICAL", "1.36.1-r15", ""),  # no fix: no alert
    af.vuln("CVE-2026-0003", "zlib", "HIGH", "1.3-r0", "1.3.1-r0"),  # HIGH: below the default
]  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]
NEW = af.vuln("CVE-2026-0004", "musl", "CRITICAL", "1.2.4-r2", "1.2.4-r3")


@pytest.fixture
def receivers() -> Iterator[dict[str, af.Receiver]]:
    started = {
        "generic": af.Receiver().start(),
        "failing": af.Receiver(behaviour="fail").start(),
        "slow": af.Receiver(behaviour="slow", delay=2.5).start(),
    }
    down = af.Receiver(services.free_port())  # started later: down for now
    started["down"] = down
    yield started
    for r in started.values():
        r.stop()


def write_config(path: Path, database_url: str, redis_url: str, r: dict[str, af.Receiver]) -> Path:
    path.write_text(
        f"""
[database]
url = "{database_url}"
[broker]
url = "{redis_url}"
[alerts]
generic_urls = ["http://hook:{CANARY}@127.0.0.1:{r["generic"].port}/generic",
                "http://127.0.0.1:{r["slow"].port}/slow"]
alertmanager_urls = ["http://127.0.0.1:{r["down"]._port}/api/v2/alerts"]
slack_urls = ["http://127.0.0.1:{r["failing"].port}/services/T0/B0/{CANARY}x"]
timeout_seconds = 1.0
max_attempts = 5
retry_base_seconds = 0.5
retry_max_seconds = 2.0
interval_seconds = 0.5
"""
    )
    return path


def inventory(conn: store.Connection, now: datetime) -> None:
    rows = [
        inv.container("c1", "team-a", "Deployment", "web", f"web-{i}", f"{REG}/team/web:1", D1,
                      at=now) for i in range(2)
    ] + [
        inv.container("c1", "team-b", "Deployment", "api", "api-0", f"{REG}/team/web:1", D1,
                      at=now),
        inv.container("c1", "team-a", "StatefulSet", "db", "db-0", f"{REG}/team/db:1", D2, at=now),
    ]  # fmt: skip
    store.record_containers(conn, rows)


def scan(
    conn: store.Connection, scan_id: str, digest: str, report: reports.Report, at: datetime
) -> None:
    repository = "team/web" if digest == D1 else "team/db"
    inv.scan(conn, scan_id, digest, repository, "c1", report, at)
    conn.commit()


def wait(
    predicate: Callable[[], Any], what: str, worker: WorkerProcess, timeout: float = 60
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; worker log:\n{worker.tail(60)}")


def deliveries(conn: store.Connection) -> list[tuple[Any, ...]]:
    conn.commit()
    return conn.execute(
        """SELECT scan_id, workload, webhook, state, attempts, coalesce(last_error, '')
             FROM alert_deliveries ORDER BY scan_id, workload, webhook"""
    ).fetchall()


def planned(conn: store.Connection, scan_id: str) -> bool:
    conn.commit()
    row = conn.execute("SELECT planned_at FROM alert_outbox WHERE scan_id = %s", (scan_id,))
    return row.fetchone() not in (None, (None,))


def failed_once(conn: store.Connection, webhook: str) -> int:
    return sum(1 for r in deliveries(conn) if r[2] == webhook and r[4] >= 1 and r[5])


def settled(conn: store.Connection, n: int) -> bool:
    rows = deliveries(conn)
    return len(rows) == n and all(r[3] != "pending" for r in rows)


def test_new_fixable_criticals_alert_once_per_workload_with_retries_and_dead_letters(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    receivers: dict[str, af.Receiver],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    now = datetime.now(UTC)
    config = write_config(tmp_path / "scanqueue.toml", database_url, redis_url, receivers)
    with store.connect(database_url) as conn:
        inventory(conn, now)
        scan(conn, "s1", D1, af.report(f"{REG}/team/web:1", R1), now)
        scan(conn, "s-db", D2, af.report(f"{REG}/team/db:1",
             [af.vuln("CVE-2026-0009", "curl", "MEDIUM", "8.0", "8.1")]), now)  # fmt: skip
        worker = worker_factory(config, queues=["scanqueue.control"], concurrency=2, beat=True)

        # 2 workloads run D1 -> 2 notifications x 4 webhooks; D2 has nothing qualifying
        wait(lambda: len(deliveries(conn)) == 8, "8 deliveries planned", worker)
        wait(lambda: failed_once(conn, "alertmanager#0") == 2,
             "both deliveries to the receiver that is down failed once", worker)  # fmt: skip
        receivers["down"].start()  # the receiver comes up: it gets its notifications later
        wait(lambda: settled(conn, 8), "every delivery sent or dead", worker)

        generic = receivers["generic"].requests
        assert sorted(r.json()["workload"]["name"] for r in generic) == ["api", "web"]
        for request in generic:
            body = request.json()
            assert [f["vulnerability_id"] for f in body["findings"]] == ["CVE-2026-0001"]
            assert body["cluster"] == "c1" and body["scan_id"] == "s1"
            auth = base64.b64encode(f"hook:{CANARY}".encode()).decode()
            assert request.headers["Authorization"] == f"Basic {auth}"  # only where it belongs
        am = receivers["down"].requests
        assert sorted(r.json()[0]["labels"]["workload"] for r in am) == ["api", "web"]
        assert {r.json()[0]["labels"]["alertname"] for r in am} == {"ScanqueueNewVulnerabilities"}
        rows = deliveries(conn)
        by_hook = {(r[1], r[2]): r for r in rows}
        for workload in ("api", "web"):
            assert by_hook[(workload, "generic#0")][3:5] == ("sent", 1)
            assert by_hook[(workload, "alertmanager#0")][3] == "sent"
            assert by_hook[(workload, "alertmanager#0")][4] >= 2  # retried until it came up
            assert by_hook[(workload, "slack#0")][3:5] == ("dead", 5)
            assert "HTTP 500" in by_hook[(workload, "slack#0")][5]
            assert by_hook[(workload, "generic#1")][3:5] == ("dead", 5)
            assert "timed out" in by_hook[(workload, "generic#1")][5]
        assert len(receivers["failing"].requests) == 10  # 5 attempts x 2 workloads, no more
        dead = conn.execute("SELECT count(*) FROM alert_dead_letters").fetchone()
        assert dead == (4,)

        # A rescan after the vulnerability data changed: one new critical -> exactly one
        # more call per workload; the known CVE-2026-0001 is not announced again.
        scan(conn, "s2", D1, af.report(f"{REG}/team/web:1", [*R1, NEW]), now + timedelta(hours=1))
        wait(lambda: settled(conn, 16), "the rescan's deliveries", worker)
        fresh = [r.json() for r in receivers["generic"].requests[2:]]
        assert sorted(b["workload"]["name"] for b in fresh) == ["api", "web"]
        assert all([f["vulnerability_id"] for f in b["findings"]] == ["CVE-2026-0004"]
                   for b in fresh)  # fmt: skip

        # The same findings again: nothing new, nothing sent.
        scan(conn, "s3", D1, af.report(f"{REG}/team/web:1", [*R1, NEW]), now + timedelta(hours=2))
        wait(lambda: planned(conn, "s3"), "the third scan planned", worker)
        time.sleep(1.5)
        assert len(deliveries(conn)) == 16
        assert len(receivers["generic"].requests) == 4

        # The planted password: in no body, no other receiver's headers, no row, no log line.
        for name, receiver in receivers.items():
            for request in receiver.requests:
                assert CANARY not in request.body.decode()
                assert CANARY not in request.path or name == "failing"  # its own URL path
                if name != "generic":
                    assert CANARY not in str(request.headers)
        table = conn.execute("SELECT alert_deliveries::text FROM alert_deliveries").fetchall()
        assert not any(CANARY in row[0] for row in table)
        assert CANARY not in worker.log.read_text(errors="replace")

        # the exporter counts them; sent ones are pruned after alerts.keep_sent_days, dead
        # letters stay
        counts = dict(overview.snapshot(conn).alert_deliveries)
        assert counts == {"sent": 8, "dead": 8}
        assert alert_store.prune(conn, sent_before=datetime.now(UTC) + timedelta(days=1)) == 8
        conn.commit()
        assert dict(overview.snapshot(conn).alert_deliveries) == {"dead": 8}


def test_a_scan_commits_its_alert_outbox_row_with_it_and_needs_no_webhook(
    store_conn: store.Connection,
) -> None:
    now = datetime.now(UTC)
    inventory(store_conn, now)
    scan(store_conn, "s1", D1, af.report(f"{REG}/team/web:1", R1), now)
    assert store_conn.execute("SELECT scan_id, planned_at FROM alert_outbox").fetchall() == [
        ("s1", None)
    ]
    # a redelivered result changes nothing: still one outbox row
    store.finish_scan(store_conn, scan_id="s1", report=af.report("x", R1), finished_at=now)
    assert store_conn.execute("SELECT count(*) FROM alert_outbox").fetchone() == (1,)
    # the row-by-row path (the benchmark's baseline) writes it too
    store.start_scan(
        store_conn, scan_id="s2", cluster="c1", digest=D2, image=f"{REG}/team/db@{D2}",
        mode="registry", attempt=1, credential_source=None, started_at=now,
    )  # fmt: skip
    store.finish_scan(
        store_conn, scan_id="s2", report=af.report("y", R1), finished_at=now, findings_via="insert"
    )
    store_conn.commit()
    rows = store_conn.execute("SELECT scan_id FROM alert_outbox ORDER BY 1").fetchall()
    assert rows == [("s1",), ("s2",)]


def test_a_redirect_is_not_followed_and_gives_the_notification_up_at_once() -> None:
    from scanqueue import alerts, errors, webhooks

    receiver = af.Receiver(behaviour="redirect").start()
    try:
        hook = alerts.parse_webhook("generic", 0, f"http://u:{CANARY}@127.0.0.1:{receiver.port}/in")
        with pytest.raises(errors.PermanentError, match="redirect") as raised:
            webhooks.post(hook, b"{}", timeout=5)
        assert CANARY not in str(raised.value) and "/in" not in str(raised.value)
        assert [r.path for r in receiver.requests] == ["/in"]  # never /elsewhere
    finally:
        receiver.stop()
    with pytest.raises(errors.TemporaryError, match="unreachable"):
        webhooks.post(hook, b"{}", timeout=5)  # the receiver is gone: retried later


def _pod_env(manifest: str, path: Path) -> dict[str, str]:
    """The webhooks file a deploy/ pod names in its env, the Secret mount moved to ``path``."""
    (doc,) = yaml.safe_load_all((ROOT / "deploy" / manifest).read_text(encoding="utf-8"))
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return {
        e["name"]: e["value"].replace("/etc/scanqueue/secrets", str(path))
        for e in container["env"]
        if e["name"] == "SCANQUEUE_ALERTS_WEBHOOKS_FILE"
    }


def test_webhooks_in_the_secret_file_alone_reach_beat_and_the_worker_as_deploy_mounts_it(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    """deploy/ (and compose) put the URLs only in the Secret's alert-webhooks.toml, named by
    the worker's and beat's environment: beat must schedule the dispatch from it and the
    worker POST to it, with the token of the URL in no log line. (A beat without the file
    schedules no dispatch and nothing is ever sent: why beat mounts it too.)"""
    receiver = af.Receiver().start()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "alert-webhooks.toml").write_text(
        f'slack_urls = ["http://127.0.0.1:{receiver.port}/services/T0/B0/{CANARY}"]\n'
    )
    config = tmp_path / "scanqueue.toml"
    config.write_text(
        f'[database]\nurl = "{database_url}"\n[broker]\nurl = "{redis_url}"\n'
        "[alerts]\ninterval_seconds = 0.5\n"  # the ConfigMap's [alerts]: no URL, no file
    )
    worker_env = _pod_env("42-worker.yaml", secrets)
    beat_env = _pod_env("43-beat.yaml", secrets)
    assert worker_env and beat_env, "worker and beat name the webhooks file"
    now = datetime.now(UTC)
    beat = processes.Process(
        "beat",
        roles.beat(schedule=tmp_path / "beat-schedule"),
        tmp_path / "beat.log",
        env={**os.environ, **beat_env, "SCANQUEUE_CONFIG": str(config)},
        cwd=tmp_path,
    )
    try:
        with store.connect(database_url) as conn:
            inventory(conn, now)
            scan(conn, "s1", D1, af.report(f"{REG}/team/web:1", R1), now)
            worker = worker_factory(config, queues=["scanqueue.control"], env=worker_env)
            beat.start()
            wait(lambda: settled(conn, 2), "both workloads' notifications sent", worker)
            assert {(r[1], r[2], r[3]) for r in deliveries(conn)} == {
                ("web", "slack#0", "sent"),
                ("api", "slack#0", "sent"),
            }
        assert len(receiver.requests) == 2
        assert all(r.path == f"/services/T0/B0/{CANARY}" for r in receiver.requests)
        log = worker.log.read_text(errors="replace")
        assert "slack#0 (127.0.0.1)" in log, "the delivered line names the webhook"
        assert CANARY not in log + beat.output()
    finally:
        beat.stop(10)
        receiver.stop()
