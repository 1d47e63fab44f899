"""The sweep: what outlived its deadline is deleted and its scan ends, even if the cluster forgot.

``scans.sweep`` runs against the emulator, real Redis and Postgres, with the
farm's clock moved past deadline + margin (the clock is a collaborator of
``scans.Farm``): a Job still running (its pull hangs and nothing stopped it)
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
def farm(sim: sim_fixtures.SimCluster, database_url: str, redis_url: str) -> Iterator[scans.Farm]:
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
    handle = scans.Farm(
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


def _submit(farm: scans.Farm, sim: sim_fixtures.SimCluster, host: str, name: str) -> Any:
    request = _request(host, name)
    claimed = dedupe.claim(
        farm.redis, cluster="alpha", digests=[request.digest or ""], ttl_seconds=3600
    )
    request = dataclasses.replace(request, scan_id=claimed[0].scan_id)
    assert scans.submit(farm, request).outcome == "submitted"
    return request


def _later(farm: scans.Farm) -> None:
    moved = datetime.now(UTC) + timedelta(seconds=DEADLINE + MARGIN + 60)
    farm.clock = lambda: moved


def test_sweep_deletes_a_job_running_past_deadline_and_margin_and_records_a_timeout(
    farm: scans.Farm, sim: sim_fixtures.SimCluster, hanging_server: str
) -> None:
    sim.create(rel.pull_secret("hang-cred", rel.dockerconfig(hanging_server, "u", "hang-pw-2")))
    request = _submit(farm, sim, hanging_server, "runs-forever")
    sim.wait_for(
        lambda: any(
            (p.get("status") or {}).get("phase") == "Running"
            for p in sim.list("Pod", SCAN_NAMESPACE)
        ),
        what="scan pod running",
    )
    assert scans.sweep(farm) == scans.Swept()  # not past its deadline yet: untouched
    assert len(sim.list("Job", SCAN_NAMESPACE)) == 1

    _later(farm)
    swept = scans.sweep(farm)
    assert swept.jobs == 1
    sim.wait_for(lambda: not rel.leftovers(sim), what="Job and Secret deleted")
    with farm.db.connection() as conn:
        row = store.get_scan(conn, request.scan_id)
    assert row is not None and row.status == "timeout"
    assert "past its deadline plus the sweep margin" in (row.error or "")
    assert dedupe.in_flight(farm.redis, request.digest or "") is None  # free for a rescan


def test_sweep_fails_a_scan_whose_job_vanished_and_releases_its_digest(
    farm: scans.Farm, sim: sim_fixtures.SimCluster, hanging_server: str
) -> None:
    sim.create(rel.pull_secret("hang-cred", rel.dockerconfig(hanging_server, "u", "hang-pw-3")))
    request = _submit(farm, sim, hanging_server, "vanishes")
    (job,) = sim.list("Job", SCAN_NAMESPACE)
    sim.delete("Job", SCAN_NAMESPACE, job["metadata"]["name"], propagation="Background")
    sim.wait_for(lambda: not rel.leftovers(sim), what="the Job and its Secret gone")

    _later(farm)
    assert scans.sweep(farm).scans_failed == 1
    with farm.db.connection() as conn:
        row = store.get_scan(conn, request.scan_id)
    assert row is not None and row.status == "failed"
    assert "vanished" in (row.error or "")
    assert dedupe.in_flight(farm.redis, request.digest or "") is None
