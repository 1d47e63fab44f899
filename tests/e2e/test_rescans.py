"""Rescans from stored SBOMs, end to end with the real Trivy: no pull, no credential, no Job.

A digest is scanned once in full (watcher, worker, the emulator's kubelet running the
scan Job's real Trivy against the registry with the pod's credential). Then the cluster
side of the farm stops and a worker with **no cluster configured** serves the rescan
queue (beat plans, the worker runs ``trivy sbom`` against the cluster's Trivy server).
The test DB gains an advisory for one of the image's packages: within one plan pass the
new finding is in Postgres and ``finding_changes`` lists it as new, while the emulator
counted zero API requests, no Secret exists and the registry logged no request. Removing
the advisory resolves it on the next rescan. Without a usable SBOM (none stored, or a
damaged one) the digest is scanned in full again by the watcher.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from scanqueue import processes
from scanqueue.sim import trivydb
from tests.e2e import test_real_findings as real_findings
from tests.support import farm_fixtures, trivy_fixtures
from tests.support.farm_fixtures import Farm
from tests.support.run_fixtures import labels, scrape
from tests.support.trivy_fixtures import EXPECTED, IMAGES
from tests.support.worker_fixtures import WorkerProcess

NS = real_findings.NS
ADDED = trivydb.Advisory("debian 12", "bash", "CVE-2099-2999", "HIGH", fixed="5.2.15-3")
FOUND = ("CVE-2099-2999", "bash", "HIGH", "5.2.15-3")


def _db(*more: trivydb.Advisory, updated_at: str) -> trivydb.AdvisoryFile:
    base = trivydb.load(trivy_fixtures.ADVISORIES).plus(*more)
    return trivydb.AdvisoryFile(base.advisories, updated_at=updated_at)


def _scanned_once(farm: Farm) -> str:
    """Start the farm with rescans on; return the digest once its full scan kept an SBOM."""
    sim = farm.clusters["alpha"]
    sim.set_advisories(trivy_fixtures.ADVISORIES)
    server = sim.trivy_server()
    farm.cluster_options["trivy_server"] = server
    farm.rescan.update(enabled=True, trivy_server=server, plan_interval_seconds=0.5,
                       interval_seconds=1800)  # fmt: skip
    host = farm.registry.host
    digest = farm.registry.push("team/rescan", "1", content="rescan", contents=IMAGES["debian"])
    sim.set_digest(f"{host}/team/rescan:1", digest)
    for obj in [*real_findings._objects(host), real_findings._pod("app", f"{host}/team/rescan:1")]:
        sim.create(obj)
    farm.start()
    farm.wait_for(lambda: farm.query("SELECT 1 FROM sboms WHERE digest = %s", digest),
                  timeout=120, what="the full scan and its kept SBOM")  # fmt: skip
    rows = farm.query("SELECT status, mode, credential_source FROM scans")
    assert rows == [("succeeded", "registry", f"{NS}/regcred ({host})")], rows
    assert _findings(farm, "registry") == EXPECTED["debian"]
    return digest


def _findings(farm: Farm, mode: str) -> set[tuple[str, str, str, str]]:
    """The findings of the latest succeeded scan of ``mode``."""
    rows = farm.query(
        """SELECT f.vulnerability_id, f.package, f.severity, f.fixed_version FROM findings f
            WHERE f.scan_id = (SELECT id FROM scans WHERE status = 'succeeded' AND mode = %s
                                ORDER BY finished_at DESC LIMIT 1)""",
        mode,
    )
    return {(str(a), str(b), str(c), str(d)) for a, b, c, d in rows}


def _rescans(farm: Farm) -> list[tuple[Any, ...]]:
    return farm.query("SELECT status, error FROM scans WHERE mode = 'sbom' ORDER BY started_at")


def test_a_new_advisory_is_found_by_a_rescan_with_no_api_request_secret_or_pull(
    farm: Farm,
) -> None:
    digest = _scanned_once(farm)
    sim = farm.clusters["alpha"]
    # the full scan counts against the DB the farm observed (a rescan makes it so if the
    # first plan pass came after the collect)
    farm.wait_for(lambda: farm.query(
        """SELECT 1 FROM scans WHERE db_updated_at IS NOT NULL AND status = 'succeeded'
            ORDER BY finished_at DESC LIMIT 1"""), timeout=30,
        what="the last evaluation counted against the observed DB")  # fmt: skip
    # the cluster side stops; a worker that knows no cluster at all serves the rescans
    farm.stop()
    before = len(_rescans(farm))
    config = farm_fixtures.write_settings(
        farm.directory / "rescan-only.toml", database_url=farm.database_url,
        redis_url=farm.redis_url, clusters=[], insecure=[], rescan=farm.rescan,
    )  # fmt: skip
    port = processes.free_port()
    rescanner = WorkerProcess(config, ["scanqueue.rescan"], farm.directory / "rescan-worker.log",
                              beat=True, metrics_port=port)  # fmt: skip
    farm.workers.append(rescanner.start())
    registry_log = farm.registry.log.read_text(errors="replace")
    sim.reset_counts()

    sim.set_advisories(_db(ADDED, updated_at="2026-06-01T00:00:00Z"))
    farm.wait_for(lambda: FOUND in _findings(farm, "sbom"), timeout=60,
                  what="the new advisory found by a rescan")  # fmt: skip
    assert _findings(farm, "sbom") == EXPECTED["debian"] | {FOUND}
    assert [s for s, _ in _rescans(farm)[before:]] == ["succeeded"]
    changes = farm.query("SELECT change, vulnerability_id, package, digest FROM finding_changes")
    assert changes == [("new", "CVE-2099-2999", "bash", digest)]
    current = farm.query(
        """SELECT workload, f.target FROM current_findings f
            WHERE vulnerability_id = 'CVE-2099-2999'"""
    )
    [(full_target,)] = farm.query(
        """SELECT DISTINCT f.target FROM findings f JOIN scans s ON s.id = f.scan_id
            WHERE s.mode = 'registry' AND f.class = 'os-pkgs'"""
    )
    assert current == [("app", full_target)]  # the pod's workload; named as the full scan's
    assert sim.request_counts() == {}  # not one Kubernetes API request
    assert sim.list("Secret", "scanqueue-scans") == []
    assert sim.list("Job", "scanqueue-scans") == []
    assert farm.registry.log.read_text(errors="replace") == registry_log  # no pull, no auth

    sim.set_advisories(_db(updated_at="2026-07-01T00:00:00Z"))
    farm.wait_for(lambda: [s for s, _ in _rescans(farm)[before:]] == ["succeeded"] * 2,
                  timeout=60, what="the rescan on the DB without the advisory")  # fmt: skip
    assert _findings(farm, "sbom") == EXPECTED["debian"]
    changes = farm.query("SELECT change, vulnerability_id, package FROM finding_changes")
    assert changes == [("resolved", "CVE-2099-2999", "bash")]
    assert sim.request_counts() == {}
    assert farm.registry.log.read_text(errors="replace") == registry_log
    metrics = scrape(f"http://127.0.0.1:{port}/metrics")
    assert metrics[("scanqueue_rescans_total", labels(outcome="succeeded"))] == 2
    updated = metrics[("scanqueue_vulnerability_db_updated_timestamp_seconds", ())]
    assert updated == datetime(2026, 7, 1, tzinfo=UTC).timestamp()

    # scanqueue explain (it reads the pod: after the counts) says what comes next, and why
    explained = subprocess.run(
        [sys.executable, "-m", "scanqueue.cli", "explain", "app", "--cluster", "alpha",
         "--namespace", NS],
        env={**os.environ, "SCANQUEUE_CONFIG": str(farm.config_path)},
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert explained.returncode == 0, explained.stderr
    assert "last scan  succeeded in alpha" in explained.stdout
    assert "(sbom; " in explained.stdout, explained.stdout
    assert "next       rescan from the stored SBOM: evaluated" in explained.stdout
    assert "against the current DB; due in" in explained.stdout


@pytest.mark.parametrize("damage", ["none stored", "truncated"])
def test_without_a_usable_sbom_the_digest_is_scanned_in_full_again(farm: Farm, damage: str) -> None:
    farm.reevaluate_seconds = 1.0
    digest = _scanned_once(farm)
    if damage == "none stored":  # as a digest scanned before rescans were on
        farm.query("DELETE FROM sboms RETURNING digest")
        farm.query("UPDATE scans SET db_updated_at = NULL RETURNING 1")
    else:
        farm.query("UPDATE sboms SET document = substring(document from 1 for 50) RETURNING 1")
    farm.clusters["alpha"].set_advisories(_db(ADDED, updated_at="2026-06-01T00:00:00Z"))
    farm.wait_for(
        lambda: len(farm.query("SELECT 1 FROM scans WHERE mode = 'registry' AND "
                               "status = 'succeeded'")) == 2,
        timeout=90, what="a second full scan",
    )  # fmt: skip
    rescans = _rescans(farm)
    if damage == "none stored":
        assert rescans == []  # the planner asked a full scan without trying
    else:
        [(status, error)] = rescans
        assert status == "failed", rescans
        assert "not readable gzip" in error and "gets a full scan instead" in error, error
    assert _findings(farm, "registry") == EXPECTED["debian"] | {FOUND}
    farm.wait_for(lambda: farm.query("SELECT 1 FROM sboms WHERE digest = %s", digest),
                  timeout=30, what="an SBOM kept again")  # fmt: skip
    assert farm.query("SELECT count(*) FROM full_scans_wanted") == [(0,)]
