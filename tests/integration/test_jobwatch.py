"""Collect on events: the Job watch (scanqueue.jobwatch) and the one-claim collect of a Job.

Against the emulator through the official client: each finished scan Job is
sent once; after a 410 Gone the watch lists again without sending a Job twice
and resumes, so a Job finishing afterwards is sent too. A Job's collect is
claimed once: concurrent collects of one Job store it once, and a claimed Job
is left alone until the claim is released.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from scanqueue import dedupe, jobwatch, scans, store
from scanqueue.scans import collection
from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.reliability.test_sweep import _request
from tests.reliability.test_sweep import scan_context as sweep_context  # noqa: F401  (the fixture)
from tests.support import reliability_fixtures as rel
from tests.support import services, sim_fixtures
from tests.support.farm_fixtures import SCAN_NAMESPACE


@pytest.fixture
def scan_context(
    sweep_context: scans.ScanContext,  # noqa: F811
    registry: services.Registry,
    sim: Any,
) -> scans.ScanContext:
    host = registry.host
    sim.create(
        rel.pull_secret("hang-cred", rel.dockerconfig(host, REGISTRY_USER, REGISTRY_PASSWORD))
    )
    return dataclasses.replace(
        sweep_context,
        settings=dataclasses.replace(
            sweep_context.settings,
            scan=dataclasses.replace(sweep_context.settings.scan, insecure_registries=(host,)),
        ),
    )


def _submit(scan_context: scans.ScanContext, registry: services.Registry, name: str) -> Any:
    digest = registry.push(f"team/{name}", "1", content=name)
    request = dataclasses.replace(_request(registry.host, name), digest=digest)
    (claimed,) = dedupe.claim(
        scan_context.redis, cluster="alpha", digests=[digest], ttl_seconds=600
    )
    request = dataclasses.replace(request, scan_id=claimed.scan_id)
    result = scans.submit(scan_context, request)
    assert result.outcome == "submitted"
    return request, result.job


def _complete(sim: sim_fixtures.SimCluster, names: set[str]) -> None:
    def done() -> bool:
        jobs = {str(j["metadata"]["name"]): j for j in sim.list("Job", SCAN_NAMESPACE)}
        return all(n in jobs and jobwatch.finished(jobs[n]) for n in names)

    sim.wait_for(done, what=f"scan Jobs {sorted(names)} finished")


@pytest.fixture
def watching(scan_context: scans.ScanContext) -> Iterator[tuple[jobwatch.JobWatcher, list[str]]]:
    sent: list[str] = []
    stop = threading.Event()

    def send(name: str, summary: dict[str, Any]) -> None:
        assert summary["metadata"]["name"] == name and jobwatch.finished(summary)
        assert "template" not in str(summary)  # no pod template: no image, no env
        sent.append(name)

    watcher = jobwatch.JobWatcher(
        cluster=scan_context.cluster,
        api=scan_context.api,
        send=send,
        stop=stop,
        watch_timeout_seconds=5,
    )
    thread = watcher.start()
    yield watcher, sent
    stop.set()
    thread.join(15)


def test_each_finished_job_is_sent_once_and_a_410_relists_without_sending_again(
    scan_context: scans.ScanContext,
    registry: services.Registry,
    sim: sim_fixtures.SimCluster,
    watching: tuple[jobwatch.JobWatcher, list[str]],
) -> None:
    watcher, sent = watching
    first = {_submit(scan_context, registry, name)[1] for name in ("watch-a", "watch-b")}
    _complete(sim, first)
    sim.wait_for(lambda: set(sent) == first, what="both finished Jobs sent")
    assert watcher.relists == 1

    sim.faults.expire_watches("jobs")  # the next watch gets 410 Gone
    sim.faults.drop_watches()  # and the open one is cut
    sim.wait_for(lambda: watcher.relists == 2, what="the watch listed again after 410")
    (_, later) = _submit(scan_context, registry, "watch-c")
    _complete(sim, {later})
    sim.wait_for(lambda: later in sent, what="a Job finishing after the re-list sent")
    assert sorted(sent) == sorted(first | {later})  # none sent twice, across the re-list


def test_a_jobs_collect_is_claimed_once(
    scan_context: scans.ScanContext, registry: services.Registry, sim: sim_fixtures.SimCluster
) -> None:
    (request, job), (other_request, other) = (
        _submit(scan_context, registry, "claim-a"),
        _submit(scan_context, registry, "claim-b"),
    )
    _complete(sim, {job, other})

    # a claimed Job is left alone, by a collect task and by the pass
    claim = collection.claim_key(sim.get("Job", SCAN_NAMESPACE, other))
    assert claim.startswith(f"{other}/")  # name and uid: a later Job of that name is another
    assert dedupe.claim_collect(scan_context.redis, cluster="alpha", job=claim, ttl_seconds=60)
    assert scans.collect_job(scan_context, other) is None
    assert [r.job for r in scans.collect(scan_context)] == [job]
    assert sim.get("Job", SCAN_NAMESPACE, other) is not None
    dedupe.release_collect(scan_context.redis, cluster="alpha", job=claim)

    # four collects of one Job at once: stored once
    barrier = threading.Barrier(4)

    def collect() -> Any:
        barrier.wait()
        return scans.collect_job(scan_context, other)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = [f.result() for f in [pool.submit(collect) for _ in range(4)]]
    assert [r.outcome for r in results if r is not None] == ["succeeded"]
    sim.wait_for(lambda: not rel.leftovers(sim), what="both Jobs and Secrets deleted")
    with scan_context.db.connection() as conn:
        rows = [store.get_scan(conn, r.scan_id) for r in (request, other_request)]
    assert [row.status for row in rows if row is not None] == ["succeeded", "succeeded"]


def test_a_job_whose_submit_died_before_the_scan_row_is_stored_with_the_row_it_says(
    scan_context: scans.ScanContext, registry: services.Registry, sim: sim_fixtures.SimCluster
) -> None:
    """The submit made the Job and its Secret, then died before recording the scan row;
    the Job finishes before the redelivered submit comes: the collect records the row from
    the Job's annotations (mode, attempt, credential source, start) and stores the report.
    A first attempt's collect does this only when the ingest finds no row."""
    request, job = _submit(scan_context, registry, "no-row")
    with scan_context.db.connection() as conn:
        submitted = store.get_scan(conn, request.scan_id)
        conn.execute("DELETE FROM scans WHERE id = %s", (request.scan_id,))
        conn.commit()
    assert submitted is not None
    _complete(sim, {job})
    result = scans.collect_job(scan_context, job)
    assert result is not None and result.outcome == "succeeded", result
    with scan_context.db.connection() as conn:
        row = store.get_scan(conn, request.scan_id)
    assert row is not None and row.status == "succeeded" and row.finished_at is not None
    assert (row.mode, row.attempt, row.credential_source, row.image) == (
        submitted.mode, submitted.attempt, submitted.credential_source, submitted.image,
    )  # fmt: skip
    sim.wait_for(lambda: not rel.leftovers(sim), what="the Job and its Secret deleted")
