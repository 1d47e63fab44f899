"""``scanqueue rescan`` and ``scanqueue prune`` against a real Redis and Postgres.

Failure marks are set the way a worker sets them (``dedupe.mark_failed_backoff``
with ``failures.delay``), the inventory the way the watcher writes it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from scanqueue import cli, config, dedupe, failures, store
from tests.support.worker_fixtures import WorkerProcess

NOW = datetime.now(UTC)
D_WEB = "sha256:" + "1" * 64
D_API = "sha256:" + "2" * 64
D_OLD = "sha256:" + "3" * 64
D_DB = "sha256:" + "4" * 64
SCAN = config.ScanSettings()


def row(
    cluster: str, namespace: str, workload: str, pod: str, image: str, digest: str, seen: datetime
) -> store.ContainerRow:
    return store.ContainerRow(
        cluster=cluster, namespace=namespace, workload_kind="Deployment", workload_name=workload,
        pod=pod, container="app", container_type="app", image=image, digest=digest,
        node="n1", seen_at=seen,
    )  # fmt: skip


@pytest.fixture
def farm_config(
    tmp_path: Path, redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    path = tmp_path / "scanqueue.toml"
    path.write_text(
        f'[database]\nurl = "{database_url}"\nretain_gone_days = 7\n'
        f'[broker]\nurl = "{redis_url}"\nresult_backend = "{redis_url}"\n'
        '[[clusters]]\nname = "alpha"\nkubeconfig = "/nonexistent"\n'
        '[[clusters]]\nname = "beta"\nkubeconfig = "/nonexistent"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("SCANQUEUE_CONFIG", str(path))
    with store.connect(database_url) as conn:
        store.record_containers(
            conn,
            [
                row("alpha", "team-a", "web", "web-1", "reg.example/team/web:1", D_WEB, NOW),
                row("alpha", "team-b", "api", "api-1", "reg.example/team/api:2", D_API, NOW),
                row("beta", "team-a", "web", "web-1", "reg.example/team/web:1", D_WEB, NOW),
                row("beta", "team-a", "db", "db-1", "reg.example/team/db:3", D_DB, NOW),
                row(
                    "alpha",
                    "team-a",
                    "old",
                    "old-1",
                    "reg.example/team/old:1",
                    D_OLD,
                    NOW - timedelta(days=30),
                ),
            ],
        )
        store.forget_pods(
            conn, cluster="alpha", namespace="team-a", pods=["old-1"], at=NOW - timedelta(days=20)
        )
    return path


def fail(conn: redis.Redis, digest: str, cluster: str, kind: failures.Kind) -> int:
    return dedupe.mark_failed_backoff(
        conn, digest, cluster=cluster, kind=kind, scan_id=None,
        delay=functools.partial(failures.delay, kind, scan=SCAN),
        window_seconds=SCAN.rescan_interval_seconds,
    )  # fmt: skip


def marked(conn: redis.Redis) -> set[tuple[str, str]]:
    found = set()
    for digest in (D_WEB, D_API, D_OLD, D_DB):
        for mark in dedupe.failed_marks(conn, digest, ["alpha", "beta"]):
            found.add((digest, mark.cluster))
    return found


def test_failures_in_a_row_wait_longer_and_remember_their_kind(redis_url: str) -> None:
    conn = dedupe.client(redis_url)
    assert [fail(conn, D_WEB, "alpha", "transient") for _ in range(3)] == [120, 240, 480]
    assert fail(conn, D_API, "alpha", "credential") == 300
    (mark,) = dedupe.failed_marks(conn, D_WEB, ["alpha", "beta"])
    assert (mark.cluster, mark.kind, mark.in_a_row) == ("alpha", "transient", 3)
    assert 470 <= mark.ttl_seconds <= 480
    # the claim a watcher makes skips the digest while the mark lives
    (decision,) = dedupe.claim(conn, cluster="alpha", digests=[D_WEB], ttl_seconds=60)
    assert decision.status == "failed-here"


def test_rescan_by_namespace_clears_only_the_digests_running_there(
    farm_config: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = dedupe.client(redis_url)
    for digest, cluster in [(D_WEB, "alpha"), (D_API, "alpha"), (D_WEB, "beta"), (D_DB, "beta")]:
        fail(conn, digest, cluster, "credential")
    assert cli.main(["rescan", "--namespace", "team-a", "--cluster", "alpha"]) == 0
    out = capsys.readouterr().out
    assert f"cleared {D_WEB} in alpha: credential" in out
    assert marked(conn) == {(D_API, "alpha"), (D_WEB, "beta"), (D_DB, "beta")}
    (decision,) = dedupe.claim(conn, cluster="alpha", digests=[D_WEB], ttl_seconds=60)
    assert decision.status == "claimed"  # the watcher's next check publishes it


def test_rescan_by_image_workload_and_reason(
    farm_config: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = dedupe.client(redis_url)
    fail(conn, D_WEB, "alpha", "failed")
    fail(conn, D_WEB, "beta", "credential")
    fail(conn, D_DB, "beta", "transient")
    assert cli.main(["rescan", "--image", "reg.example/team/web", "--reason", "credential"]) == 0
    assert marked(conn) == {(D_WEB, "alpha"), (D_DB, "beta")}
    assert cli.main(["rescan", "--workload", "Deployment/db", "--dry-run"]) == 0
    assert "would clear" in capsys.readouterr().out
    assert marked(conn) == {(D_WEB, "alpha"), (D_DB, "beta")}
    assert cli.main(["rescan", "--workload", "Deployment/db"]) == 0
    assert marked(conn) == {(D_WEB, "alpha")}


def test_rescan_by_digest_needs_no_inventory_and_force_forgets_fresh(
    farm_config: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = dedupe.client(redis_url)
    fail(conn, D_OLD, "alpha", "failed")
    dedupe.mark_fresh(conn, D_WEB, ttl_seconds=3600)
    assert cli.main(["rescan", "--digest", D_OLD]) == 0
    assert marked(conn) == set()
    assert cli.main(["rescan", "--digest", D_WEB, "--force"]) == 0
    assert not dedupe.is_fresh(conn, D_WEB)
    assert "fresh scans" in capsys.readouterr().out


def test_rescan_without_a_filter_is_a_usage_error(
    farm_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["rescan"]) == 2
    assert "name what to rescan" in capsys.readouterr().err


def test_prune_deletes_containers_gone_longer_than_the_retention_and_their_workload(
    farm_config: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with store.connect(database_url) as conn:
        store.forget_pods(
            conn, cluster="beta", namespace="team-a", pods=["db-1"], at=datetime.now(UTC)
        )
    assert cli.main(["prune"]) == 0
    assert "deleted 1 container row(s)" in capsys.readouterr().out
    with store.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT c.pod, c.gone_at IS NOT NULL FROM containers c ORDER BY 1, 2"
        ).fetchall()
        workloads = [r[0] for r in conn.execute("SELECT name FROM workloads ORDER BY 1")]
    assert rows == [("api-1", False), ("db-1", True), ("web-1", False), ("web-1", False)]
    assert "old" not in workloads and "db" in workloads


def _ledger(conn: store.Connection, *workloads: tuple[str, str, str]) -> None:
    for cluster, namespace, workload in workloads:
        conn.execute(
            """INSERT INTO alerted_findings (cluster, namespace, workload_kind, workload,
                                             vulnerability_id, package, scan_id, alerted_at)
               VALUES (%s, %s, 'Deployment', %s, 'CVE-2024-0001', 'openssl', 's-old', %s)""",
            (cluster, namespace, workload, NOW - timedelta(days=60)),
        )


def test_prune_deletes_the_alert_ledger_past_its_retention_and_keeps_what_dedupes(
    farm_config: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with store.connect(database_url) as conn:
        for scan_id in ("s-old", "s-recent", "s-unplanned"):
            store.start_scan(conn, scan_id=scan_id, cluster="alpha", digest=D_WEB,
                             image=f"reg.example/team/web@{D_WEB}", mode="registry", attempt=1,
                             credential_source=None,
                             started_at=NOW - timedelta(days=40))  # fmt: skip
        with conn.transaction():
            conn.execute(
                """INSERT INTO alert_outbox (scan_id, created_at, planned_at) VALUES
                   ('s-old', %(d40)s, %(d40)s), ('s-recent', %(d40)s, %(d1)s),
                   ('s-unplanned', %(d40)s, NULL)""",
                {"d40": NOW - timedelta(days=40), "d1": NOW - timedelta(days=1)},
            )
            for name, state, finished in [
                ("dead-old", "dead", 100),
                ("dead-new", "dead", 10),
                ("waiting", "pending", None),
                ("sent", "sent", 1),
            ]:
                conn.execute(
                    """INSERT INTO alert_deliveries (scan_id, cluster, namespace, workload_kind,
                              workload, webhook, notification, state, finished_at)
                       VALUES ('s-old', 'alpha', 'team-a', 'Deployment', 'web', %s, '{}', %s,
                               %s)""",
                    (name, state, None if finished is None else NOW - timedelta(days=finished)),
                )  # fmt: skip
            # web runs; old is pruned by this very run (gone 20 days, retain 7); removed is
            # no longer in the inventory at all
            _ledger(conn, ("alpha", "team-a", "web"), ("beta", "team-a", "web"),
                    ("alpha", "team-a", "old"), ("beta", "team-x", "removed"))  # fmt: skip
    assert cli.main(["prune"]) == 0
    out = capsys.readouterr().out
    assert "deleted 1 outbox row(s) planned more than 30 day(s) ago, 1 dead letter(s) " \
        "older than 90 day(s), 2 ledger row(s)" in out, out  # fmt: skip
    with store.connect(database_url) as conn:
        outbox = [r[0] for r in conn.execute("SELECT scan_id FROM alert_outbox ORDER BY 1")]
        hooks = [r[0] for r in conn.execute("SELECT webhook FROM alert_deliveries ORDER BY 1")]
        ledger = conn.execute(
            "SELECT cluster, workload FROM alerted_findings ORDER BY 1, 2"
        ).fetchall()
    assert outbox == ["s-recent", "s-unplanned"]
    assert hooks == ["dead-new", "sent", "waiting"]  # sent ones: the dispatcher's keep_sent_days
    assert ledger == [("alpha", "web"), ("beta", "web")]
    # the ledger still keeps web's finding from alerting twice; dead letters kept forever at 0
    with store.connect(database_url) as conn:
        again = store.prune(conn, now=NOW + timedelta(days=400), retain_gone_days=0,
                            keep_sent_days=30, keep_dead_days=0)  # fmt: skip
    assert (again.dead_letters, again.alert_ledger, again.alert_outbox) == (0, 0, 1)
    with store.connect(database_url) as conn:  # never an outbox row not planned yet
        assert [r[0] for r in conn.execute("SELECT scan_id FROM alert_outbox")] == ["s-unplanned"]


def test_the_daily_prune_task_runs_on_the_control_queue_of_a_real_worker(
    farm_config: Path,
    redis_url: str,
    database_url: str,
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    from workers import app as worker_app

    worker_factory(farm_config, queues=[worker_app.CONTROL_QUEUE])
    client = worker_app.make_app(config.load(farm_config, environ={}))
    result = client.send_task("scanqueue.prune", queue=worker_app.CONTROL_QUEUE)
    assert result.get(timeout=60) == {"containers": 1, "workloads": 1, "alert_outbox": 0,
                                      "dead_letters": 0, "alert_ledger": 0}  # fmt: skip
    with store.connect(database_url) as conn:
        pods = [r[0] for r in conn.execute("SELECT pod FROM containers ORDER BY 1")]
    assert "old-1" not in pods and len(pods) == 4


def test_rescan_all_clears_thousands_of_marks_in_a_few_round_trips(
    farm_config: Path, redis_url: str, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    many = [f"sha256:{i:064x}" for i in range(3000)]
    with store.connect(database_url) as conn:
        store.record_containers(
            conn,
            [row("beta", "bulk", f"w{i % 50}", f"p{i}", f"reg.example/bulk/{i}:1", d, NOW)
             for i, d in enumerate(many)],
        )  # fmt: skip
    conn = dedupe.client(redis_url)
    pipe = conn.pipeline(transaction=False)
    for digest in many:
        pipe.set(dedupe.failed_key(digest, "beta"), "credential", ex=3600)
    pipe.execute()
    before = int(conn.info("stats")["total_commands_processed"])
    assert cli.main(["rescan", "--all", "--cluster", "beta", "--reason", "credential"]) == 0
    commands = int(conn.info("stats")["total_commands_processed"]) - before
    assert "cleared 3000 failed mark(s)" in capsys.readouterr().out
    assert not any(dedupe.failed_marks(conn, d, ["beta"]) for d in many[::97])
    # three reads and two deletes per mark, in pipelines: no per-digest round trips beyond that
    assert commands <= 3000 * 5 + 50
