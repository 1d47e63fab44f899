"""The sweep: what outlived its deadline is deleted and its scan ends, even if the cluster forgot.

``scans.sweep`` runs against the emulator, real Redis and Postgres, with the
farm's clock moved past deadline + margin (the clock is a collaborator of
``scans.ScanContext``): a Job still running (its pull hangs and nothing stopped it)
is deleted with its Secret and the scan recorded as ``timeout``; a scan whose
Job vanished is recorded as ``failed`` and its digest released for a rescan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from scanqueue import config, dedupe, discovery, kube, scans, store
from tests.support import reliability_fixtures as rel
from tests.support import sim_fixtures
from tests.support.farm_fixtures import SCAN_NAMESPACE

DEADLINE, MARGIN = 600, 120


@pytest.fixture
def scan_context(
    sim: sim_fixtures.SimCluster, database_url: str, redis_url: str
) -> Iterator[scans.ScanContext]:
    cluster = config.ClusterSettings(
        name="alpha",
        kubeconfig=str(sim.kubeconfig),
        scan_namespace=SCAN_NAMESPACE,
        scan_mode="registry",
    )
    settings = config.Settings(
        database=config.DatabaseSettings(url=database_url),
        broker=config.BrokerSettings(url=redis_url),
        scan=config.ScanSettings(
            job_deadline_seconds=DEADLINE,
            sweep_margin_seconds=MARGIN,
            verify_with_registry=False,
            allow_anonymous=False,
        ),
        clusters=(cluster,),
    )
    sim.create(rel.namespace())
    sim.create(rel.namespace(SCAN_NAMESPACE))
    handle = scans.ScanContext(
        settings=settings,
        cluster=cluster,
        api=kube.api_client(cluster),
        db=store.pool(database_url),
        redis=dedupe.client(redis_url),
        registry=None,
    )
    try:
        yield handle
    finally:
        handle.db.close()
        handle.redis.close()
        handle.api.close()


def _request(host: str, name: str) -> discovery.ScanRequest:
    return discovery.ScanRequest(
        cluster="alpha",
        namespace=rel.NS,
        pod=name,
        workload_kind="Pod",
        workload_name=name,
        container="app",
        container_type="app",
        image=f"{host}/team/{name}:1",
        digest="sha256:" + name.encode().hex().ljust(64, "0")[:64],
        node="node-1",
        pull_secrets=("hang-cred",),
        service_account="default",
        scan_id=dedupe.new_scan_id(),
    )


def _submit(
    scan_context: scans.ScanContext, sim: sim_fixtures.SimCluster, host: str, name: str
) -> Any:
    request = _request(host, name)
    claimed = dedupe.claim(
        scan_context.redis, cluster="alpha", digests=[request.digest or ""], ttl_seconds=3600
    )
    request = dataclasses.replace(request, scan_id=claimed[0].scan_id)
    assert scans.submit(scan_context, request).outcome == "submitted"
    return request


def _later(scan_context: scans.ScanContext) -> None:
    moved = datetime.now(UTC) + timedelta(seconds=DEADLINE + MARGIN + 60)
    scan_context.clock = lambda: moved


def test_sweep_deletes_a_job_running_past_deadline_and_margin_and_records_a_timeout(
    scan_context: scans.ScanContext, sim: sim_fixtures.SimCluster, hanging_server: str
) -> None:
    sim.create(rel.pull_secret("hang-cred", rel.dockerconfig(hanging_server, "u", "hang-pw-2")))
    request = _submit(scan_context, sim, hanging_server, "runs-forever")
    sim.wait_for(
        lambda: any(
            (p.get("status") or {}).get("phase") == "Running"
            for p in sim.list("Pod", SCAN_NAMESPACE)
        ),
        what="scan pod running",
    )
    assert scans.sweep(scan_context) == scans.Swept()  # not past its deadline yet: untouched
    assert len(sim.list("Job", SCAN_NAMESPACE)) == 1

    _later(scan_context)
    swept = scans.sweep(scan_context)
    assert swept.jobs == 1
    sim.wait_for(lambda: not rel.leftovers(sim), what="Job and Secret deleted")
    with scan_context.db.connection() as conn:
        row = store.get_scan(conn, request.scan_id)
    assert row is not None and row.status == "timeout"
    assert "past its deadline plus the sweep margin" in (row.error or "")
    assert dedupe.in_flight(scan_context.redis, request.digest or "") is None  # free for a rescan


def test_sweep_fails_a_scan_whose_job_vanished_and_releases_its_digest(
    scan_context: scans.ScanContext, sim: sim_fixtures.SimCluster, hanging_server: str
) -> None:
    sim.create(rel.pull_secret("hang-cred", rel.dockerconfig(hanging_server, "u", "hang-pw-3")))
    request = _submit(scan_context, sim, hanging_server, "vanishes")
    (job,) = sim.list("Job", SCAN_NAMESPACE)
    sim.delete("Job", SCAN_NAMESPACE, job["metadata"]["name"], propagation="Background")
    sim.wait_for(lambda: not rel.leftovers(sim), what="the Job and its Secret gone")

    _later(scan_context)
    assert scans.sweep(scan_context).scans_failed == 1
    with scan_context.db.connection() as conn:
        row = store.get_scan(conn, request.scan_id)
    assert row is not None and row.status == "failed"
    assert "vanished" in (row.error or "")
    assert dedupe.in_flight(scan_context.redis, request.digest or "") is None


def test_sweep_ends_a_rescan_whose_worker_died_even_with_rescans_off(
    scan_context: scans.ScanContext,
) -> None:
    """A rescan has no Job; the planner ends lost ones, but with rescans turned off since,
    no planner runs: the sweep does it, past the rescans' busy window."""
    digest = "sha256:" + "5b" * 32
    with scan_context.db.connection() as conn:
        store.start_scan(conn, scan_id="sbom-orphan", cluster="alpha", digest=digest,
                         image=f"reg.example/team/app@{digest}", mode="sbom", attempt=1,
                         credential_source=None, started_at=datetime.now(UTC))  # fmt: skip
    assert not scan_context.settings.rescan.enabled
    assert scans.sweep(scan_context).scans_failed == 0  # within its window: it may still run
    _later(scan_context)
    assert scans.sweep(scan_context).scans_failed == 1
    with scan_context.db.connection() as conn:
        row = store.get_scan(conn, "sbom-orphan")
    assert row is not None and (row.status, row.error) == (
        "failed", "rescan task lost (worker gone?); planned again")  # fmt: skip
