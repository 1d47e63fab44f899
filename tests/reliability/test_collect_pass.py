"""A collect pass survives one Job that fails for good: the others are still collected.

A 403 reading one scan pod's log (RBAC broken for that one call) is permanent:
retrying the same Job on every pass would block the cluster's collection for
ever. The pass ends that scan with the reason and deletes its Job, and stores
every other finished scan.
"""

from __future__ import annotations

import dataclasses

from scanqueue import dedupe, scans, store
from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.reliability.test_sweep import _request, scan_context  # noqa: F401  (the fixture)
from tests.support import reliability_fixtures as rel
from tests.support import services, sim_fixtures
from tests.support.farm_fixtures import SCAN_NAMESPACE


def test_a_job_failing_for_good_does_not_stop_the_pass(
    scan_context: scans.ScanContext,  # noqa: F811
    sim: sim_fixtures.SimCluster,
    registry: services.Registry,
) -> None:
    host = registry.host
    sim.create(
        rel.pull_secret("hang-cred", rel.dockerconfig(host, REGISTRY_USER, REGISTRY_PASSWORD))
    )
    scan_context = dataclasses.replace(
        scan_context,
        settings=dataclasses.replace(
            scan_context.settings,
            scan=dataclasses.replace(scan_context.settings.scan, insecure_registries=(host,)),
        ),
    )
    requests = []
    for name in ("collect-a", "collect-b"):
        digest = registry.push(f"team/{name}", "1", content=name)
        request = dataclasses.replace(_request(host, name), digest=digest)
        (claimed,) = dedupe.claim(
            scan_context.redis, cluster="alpha", digests=[digest], ttl_seconds=600
        )
        request = dataclasses.replace(request, scan_id=claimed.scan_id)
        assert scans.submit(scan_context, request).outcome == "submitted"
        requests.append(request)
    sim.wait_for(
        lambda: (
            all(
                any(
                    c.get("type") == "Complete"
                    for c in (j.get("status") or {}).get("conditions") or []
                )
                for j in sim.list("Job", SCAN_NAMESPACE)
            )
            and len(sim.list("Job", SCAN_NAMESPACE)) == 2
        ),
        what="both scan Jobs complete",
    )
    sim.faults.fail(403, verb="get", resource="pods/log", count=1)

    results = scans.collect(scan_context)

    assert sorted(r.outcome for r in results) == ["failed", "succeeded"]
    sim.wait_for(lambda: not rel.leftovers(sim), what="both Jobs and Secrets deleted")
    with scan_context.db.connection() as conn:
        rows = [store.get_scan(conn, r.scan_id) for r in requests]
    statuses = sorted((row.status, row.error or "") for row in rows if row is not None)
    assert [s for s, _ in statuses] == ["failed", "succeeded"]
    assert "Forbidden" in statuses[0][1] or "forbidden" in statuses[0][1]
