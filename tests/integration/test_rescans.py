"""Rescans from stored SBOMs against real Postgres, Redis and the real Trivy (server mode).

A full scan's real Trivy JSON (``trivy rootfs --list-all-pkgs`` of an image's files, the
report a scan Job writes) is stored and its SBOM kept; the rescan runs ``trivy sbom``
against a ``trivy server`` whose DB the test changes. No cluster, no registry.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from scanqueue import cli, config, dedupe, explain, reports, store
from scanqueue.scans import rescan
from scanqueue.sim import scanner, trivydb
from scanqueue.store import sboms as stored_sboms
from tests.support import trivy_fixtures
from tests.support.trivy_fixtures import EXPECTED, IMAGES

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"registry.test/team/app@{DIGEST}"
NEWER = "2026-06-01T00:00:00Z"
ADDED = trivydb.Advisory("debian 12", "bash", "CVE-2099-2999", "HIGH", fixed="5.2.15-3")


class World:
    """A Trivy server on a DB the test rewrites, Postgres and Redis, and the rescanner."""

    def __init__(self, tmp: Path, database_url: str, redis_url: str, token: str = "") -> None:
        self.tmp = tmp
        self.database_url = database_url
        self.redis_url = redis_url
        self.token = token  # the Trivy server wants it; the rescanner reads it from a file
        self.generation = 0
        self.published: list[dict[str, str]] = []
        self.server: scanner.Server | None = None
        self.set_db(trivydb.load(trivy_fixtures.ADVISORIES))
        assert self.server is not None
        self.rescan_settings: dict[str, object] = {
            "enabled": True, "trivy_server": self.server.url, "interval_seconds": 600}  # fmt: skip
        if token:
            (tmp / "trivy-token").write_text(token + "\n")
            self.rescan_settings["trivy_server_token_file"] = str(tmp / "trivy-token")
        self.settings = config.from_mapping(
            {"database": {"url": database_url}, "broker": {"url": redis_url},
             "rescan": self.rescan_settings},
            environ={},
        )  # fmt: skip
        self.rescanner = rescan.Rescanner(
            settings=self.settings,
            db=store.pool(database_url, min_size=1, max_size=2),
            redis=dedupe.client(redis_url),
            publish=self.published.append,
        )

    def set_db(self, advisories: trivydb.AdvisoryFile) -> None:
        self.generation += 1
        cache = self.tmp / f"cache-{self.generation}"
        trivydb.write_db(advisories, cache)
        port = self.server.port if self.server else 0
        if self.server is not None:
            self.server.stop()
        self.server = scanner.Server(cache, log=self.tmp / "server.log", token=self.token)
        self.server.start(port=port)

    def full_scan(self) -> str:
        """A full scan's report as a scan Job writes it: Trivy JSON listing every package."""
        root = self.tmp / "root"
        for path, content in IMAGES["debian"].items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(content)
        assert self.server is not None
        done = scanner.run(["rootfs", "--format", "json", "--quiet", "--scanners", "vuln",
                            "--list-all-pkgs", "--server", self.server.url, str(root)],
                           env={"TRIVY_TOKEN": self.token} if self.token else None)  # fmt: skip
        assert done.exit_code == 0, done.stderr
        scan_id = "full-1"
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            store.start_scan(conn, scan_id=scan_id, cluster="eu", digest=DIGEST, image=IMAGE,
                             mode="registry", attempt=1, credential_source="team-a/regcred",
                             started_at=datetime.now(UTC) - timedelta(minutes=5))  # fmt: skip
            store.finish_scan(conn, scan_id=scan_id, report=reports.parse(done.stdout),
                              finished_at=datetime.now(UTC) - timedelta(minutes=4))  # fmt: skip
        assert rescan.keep_sbom(settings=self.settings, db=self.rescanner.db, scan_id=scan_id,
                                digest=DIGEST, text=done.stdout)  # fmt: skip
        return done.stdout

    def rescan(self, scan_id: str) -> str:
        return rescan.run(self.rescanner, scan_id=scan_id, digest=DIGEST, cluster="eu",
                          image=IMAGE)  # fmt: skip

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def execute(self, sql: str, *params: object) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(sql, params)

    def findings(self, scan_id: str) -> set[tuple[str, str, str, str]]:
        rows = self.query(
            """SELECT vulnerability_id, package, severity, fixed_version FROM findings
                WHERE scan_id = %s""",
            scan_id,
        )
        return {(str(a), str(b), str(c), str(d)) for a, b, c, d in rows}

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.rescanner.db.close()
        self.rescanner.redis.close()


@pytest.fixture
def world(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[World]:
    handle = World(tmp_path, database_url, redis_url)
    try:
        yield handle
    finally:
        handle.close()


def test_a_kept_sbom_rescans_to_the_full_scans_findings_then_follows_the_db(
    world: World,
) -> None:
    world.full_scan()
    assert world.findings("full-1") == EXPECTED["debian"]
    assert world.rescan("sbom-1") == "succeeded"
    assert world.findings("sbom-1") == EXPECTED["debian"]
    row = world.query("SELECT status, mode, db_updated_at, artifact FROM scans WHERE id = 'sbom-1'")
    assert row == [("succeeded", "sbom", datetime(2026, 1, 1, tzinfo=UTC), IMAGE)]
    targets = world.query("SELECT DISTINCT target FROM findings WHERE scan_id = 'sbom-1'")
    assert sorted(t for (t,) in targets) == ["Python", f"{IMAGE} (debian 12.5)"]

    newer = trivydb.load(trivy_fixtures.ADVISORIES).plus(ADDED)
    world.set_db(trivydb.AdvisoryFile(newer.advisories, updated_at=NEWER))
    assert world.rescan("sbom-2") == "succeeded"
    added = ("CVE-2099-2999", "bash", "HIGH", "5.2.15-3")
    assert world.findings("sbom-2") == EXPECTED["debian"] | {added}
    changes = world.query("SELECT change, vulnerability_id, package FROM finding_changes")
    assert changes == [("new", "CVE-2099-2999", "bash")]

    world.set_db(trivydb.load(trivy_fixtures.ADVISORIES))
    assert world.rescan("sbom-3") == "succeeded"
    changes = world.query("SELECT change, vulnerability_id, package FROM finding_changes")
    assert changes == [("resolved", "CVE-2099-2999", "bash")]


_NOT_CYCLONEDX = {"SchemaVersion": 2}  # Trivy's own JSON, not an SBOM
# passes our checks (CycloneDX, components), refused by Trivy's decoder
_FUTURE_CYCLONEDX = {"bomFormat": "CycloneDX", "specVersion": "9.9",
                     "components": [{"type": "library", "name": "bash"}]}  # fmt: skip


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("UPDATE sboms SET document = substring(document from 1 for 60)", "not readable gzip"),
        (_NOT_CYCLONEDX, "not a CycloneDX document"),
        (_FUTURE_CYCLONEDX, "trivy sbom cannot read the stored SBOM: "),
    ],
    ids=["truncated-row", "wrong-format", "refused-by-trivy"],
)
def test_an_unreadable_sbom_ends_as_a_clear_error_and_a_full_scan(
    world: World, damage: str | dict[str, object], why: str
) -> None:
    world.full_scan()
    if isinstance(damage, str):
        world.execute(damage)
    else:
        world.execute("UPDATE sboms SET document = %s", gzip.compress(json.dumps(damage).encode()))
    assert world.rescan("sbom-bad") == "unreadable_sbom"
    [(status, error)] = world.query("SELECT status, error FROM scans WHERE id = 'sbom-bad'")
    assert status == "failed"
    assert why in str(error) and "gets a full scan instead" in str(error), error
    assert world.findings("sbom-bad") == set()
    assert world.query("SELECT digest FROM full_scans_wanted") == [(DIGEST,)]
    assert world.query("SELECT count(*) FROM sboms") == [(0,)]
    # the watcher no longer counts the digest fresh: it publishes a full scan
    with psycopg.connect(world.database_url) as conn:
        since = datetime.now(UTC) - timedelta(hours=1)
        assert store.fresh_digests(conn, [DIGEST], since=since) == set()


def test_no_stored_sbom_means_a_full_scan(world: World) -> None:
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        store.start_scan(conn, scan_id="full-old", cluster="eu", digest=DIGEST, image=IMAGE,
                         mode="registry", attempt=1, credential_source=None,
                         started_at=datetime.now(UTC))  # fmt: skip
    assert world.rescan("sbom-none") == "no_sbom"
    [(status, error)] = world.query("SELECT status, error FROM scans WHERE id = 'sbom-none'")
    assert (status, error) == ("failed", "no stored SBOM; the digest gets a full scan instead")
    assert world.query("SELECT reason FROM full_scans_wanted") == [("no stored SBOM",)]


def test_scanqueue_sbom_prints_the_cyclonedx_or_says_none_is_stored(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCANQUEUE_CONFIG", str(world.tmp / "none.toml"))
    (world.tmp / "none.toml").write_text(f'[database]\nurl = "{world.database_url}"\n')
    assert cli.main(["sbom", DIGEST]) == 2
    assert f"no SBOM stored for {DIGEST}" in capsys.readouterr().err
    world.full_scan()
    assert cli.main(["sbom", IMAGE]) == 0
    out = capsys.readouterr().out
    bom = json.loads(out)
    assert bom["bomFormat"] == "CycloneDX"
    names = {c["name"] for c in bom["components"]}
    assert {"bash", "libssl3", "libc6", "requests", "idna"} <= names
    [(size, packages, version)] = world.query(
        "SELECT size_bytes, packages, scanner_version FROM sboms"
    )
    assert packages == len(bom["components"]) and version == scanner.VERSION
    assert size == len(out.encode())


def test_explain_says_whether_the_next_evaluation_is_a_rescan_or_a_full_scan(
    world: World,
) -> None:
    def upcoming() -> tuple[str, bool, str]:
        with psycopg.connect(world.database_url) as conn:
            decision = explain.next_evaluation(conn, DIGEST, world.settings)
        return decision.next, decision.due, decision.why

    assert upcoming()[:2] == ("full", True)  # never scanned
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        observed = datetime(2026, 1, 1, tzinfo=UTC)
        stored_sboms.observe_db(
            conn, updated_at=observed, trivy_version="0.76.0", source="test", at=datetime.now(UTC)
        )
    world.full_scan()
    next_, due, why = upcoming()
    assert (next_, due) == ("sbom", False), why
    assert "against the current DB; due in" in why
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        observed = datetime(2026, 6, 1, tzinfo=UTC)
        stored_sboms.observe_db(
            conn, updated_at=observed, trivy_version="0.76.0", source="test", at=datetime.now(UTC)
        )
    next_, due, why = upcoming()
    assert (next_, due) == ("sbom", True) and "is newer than 2026-01-01" in why, why
    world.execute("UPDATE sboms SET scanner_version = '0.45.0'")
    next_, due, why = upcoming()
    assert (next_, due) == ("full", True) and "0.45.0, older than" in why, why
    off = dataclasses.replace(world.settings, rescan=config.RescanSettings())
    with psycopg.connect(world.database_url) as conn:
        assert explain.next_evaluation(conn, DIGEST, off).why.startswith("rescans are off")


def test_identical_sboms_rescanned_at_once_all_succeed(world: World) -> None:
    """A Trivy server deletes an uploaded SBOM when its scan ends, keyed by content: two
    identical package lists at once would fail one with "layer cache missing"."""
    world.full_scan()
    other = "sha256:" + "cd" * 32
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        store.start_scan(conn, scan_id="full-2", cluster="eu", digest=other,
                         image=f"registry.test/team/twin@{other}", mode="registry", attempt=1,
                         credential_source=None, started_at=datetime.now(UTC))  # fmt: skip
    world.execute(
        """INSERT INTO sboms (digest, format, compression, document, size_bytes, packages,
                              scanner_version, scan_id)
           SELECT %s, format, compression, document, size_bytes, packages, scanner_version,
                  'full-2' FROM sboms""",
        other,
    )

    def one(job: tuple[str, str]) -> str:
        return rescan.run(world.rescanner, scan_id=job[0], digest=job[1], cluster="eu",
                          image=f"r/x@{job[1]}")  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for round_ in range(4):
            jobs = [(f"a-{round_}", DIGEST), (f"b-{round_}", other)]
            assert list(pool.map(one, jobs)) == ["succeeded", "succeeded"]


def _running(digest: str, *, pod: str, gone: bool = False) -> store.ContainerRow:
    return store.ContainerRow(cluster="eu", namespace="team-a", workload_kind="Deployment",
                              workload_name=pod, pod=pod, container="app", container_type="app",
                              image="registry.test/team/app:1", digest=digest, node="n1",
                              seen_at=datetime.now(UTC))  # fmt: skip


def test_a_db_update_makes_running_digests_due_a_few_per_plan_pass_oldest_first(
    world: World,
) -> None:
    """Rate limit and inventory: a newer DB makes every running digest due, but a plan pass
    starts at most rescan.max_per_plan of them less those still in flight, oldest first; a
    digest gone from every cluster is never rescanned, and one asked for a full scan costs
    no budget."""
    report = reports.parse(world.full_scan())
    digests = [DIGEST] + [f"sha256:{i:064x}" for i in range(1, 5)]  # sha256:...01 oldest
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        for age, digest in enumerate(digests[1:]):
            scan_id, when = f"full-{digest[-4:]}", datetime.now(UTC) - timedelta(hours=5 - age)
            store.start_scan(conn, scan_id=scan_id, cluster="eu", digest=digest,
                             image=f"registry.test/team/app@{digest}", mode="registry",
                             attempt=1, credential_source=None, started_at=when)  # fmt: skip
            store.finish_scan(conn, scan_id=scan_id, report=report, finished_at=when)
        conn.execute(
            """INSERT INTO sboms (digest, format, compression, document, size_bytes, packages,
                                  scanner_version, scan_id)
               SELECT d, format, compression, document, size_bytes, packages, scanner_version,
                      scan_id FROM sboms, unnest(%s::text[]) AS d""",
            (digests[1:],),
        )
        rows = [_running(d, pod=f"p{i}") for i, d in enumerate(digests[:4])]
        store.record_containers(conn, [*rows, _running(digests[4], pod="gone")])
        store.forget_pods(
            conn, cluster="eu", namespace="team-a", pods=["gone"], at=datetime.now(UTC)
        )
        stored_sboms.want_full_scan(conn, digest=digests[3], reason="truncated SBOM")
    limited = dataclasses.replace(
        world.settings, rescan=dataclasses.replace(world.settings.rescan, max_per_plan=2)
    )
    world.rescanner.settings = limited
    world.set_db(trivydb.AdvisoryFile(trivydb.load(trivy_fixtures.ADVISORIES).advisories,
                                      updated_at="2026-06-01T00:00:00Z"))  # fmt: skip
    first = rescan.plan(world.rescanner)
    assert (first.rescans, first.full_scans, first.due) == (2, 0, 4)
    assert first.oldest_due_seconds > 4 * 3600
    assert [p["digest"] for p in world.published] == [digests[1], digests[2]]
    # rescans in flight count against the budget: nothing more while both are queued
    assert rescan.plan(world.rescanner).rescans == 0
    # they are not planned twice; with room for one more, the next pass takes the next one
    world.rescanner.settings = dataclasses.replace(
        limited, rescan=dataclasses.replace(limited.rescan, max_per_plan=3)
    )
    second = rescan.plan(world.rescanner)
    assert [p["digest"] for p in world.published[2:]] == [DIGEST]
    assert (second.rescans, second.due) == (1, 2)  # the wish for a full scan waits
    running = world.query("SELECT digest FROM scans WHERE mode = 'sbom' AND status = 'running'")
    assert {d for (d,) in running} == {digests[1], digests[2], DIGEST}


def test_without_a_server_rescans_read_the_local_db_and_write_nothing_there(
    world: World,
) -> None:
    world.full_scan()
    cache = world.tmp / f"cache-{world.generation}"
    before = sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))
    world.rescanner.settings = dataclasses.replace(
        world.settings,
        rescan=dataclasses.replace(world.settings.rescan, trivy_server="", cache_dir=str(cache)),
    )
    assert world.rescan("sbom-local") == "succeeded"
    assert world.findings("sbom-local") == EXPECTED["debian"]
    [(db_at,)] = world.query("SELECT db_updated_at FROM scans WHERE id = 'sbom-local'")
    assert db_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) == before


def test_an_sbom_from_a_trivy_too_old_is_replaced_by_the_next_full_scans(world: World) -> None:
    world.full_scan()
    world.execute("UPDATE sboms SET scanner_version = '0.45.0'")
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        store.record_containers(conn, [_running(DIGEST, pod="p0")])
    world.set_db(trivydb.AdvisoryFile(trivydb.load(trivy_fixtures.ADVISORIES).advisories,
                                      updated_at="2026-06-01T00:00:00Z"))  # fmt: skip
    planned = rescan.plan(world.rescanner)
    assert (planned.rescans, planned.full_scans) == (0, 1)
    [(reason,)] = world.query("SELECT reason FROM full_scans_wanted")
    assert "its SBOM came from 0.45.0, older than rescan.min_trivy_version 0.50.0" in reason
    assert world.query("SELECT count(*) FROM sboms") == [(0,)]
    world.full_scan()  # the full scan the watcher publishes keeps its own package list
    assert world.query("SELECT scanner_version FROM sboms") == [(scanner.VERSION,)]
    assert world.query("SELECT count(*) FROM full_scans_wanted") == [(0,)]
