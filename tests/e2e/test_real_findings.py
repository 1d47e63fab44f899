"""The farm end to end with the real Trivy: findings in Postgres are exactly the test DB's
advisories for the image's packages, and one more advisory makes exactly one new finding.

Watcher and worker processes, the emulator whose kubelet runs the scan Job with the real
Trivy in client/server mode (one ``trivy server`` for the emulated cluster), the registry,
Redis and Postgres; no recorded report anywhere.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from scanqueue.sim import trivydb
from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import services, trivy_fixtures
from tests.support.farm_fixtures import Farm
from tests.support.trivy_fixtures import EXPECTED, IMAGES

NS = "team-a"


def _objects(host: str) -> list[dict[str, Any]]:
    config = json.loads(services.dockerconfigjson(host, REGISTRY_USER, REGISTRY_PASSWORD))
    data = base64.b64encode(json.dumps(config).encode()).decode()
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
         "metadata": {"name": "regcred", "namespace": NS},
         "data": {".dockerconfigjson": data}},
    ]  # fmt: skip


def _pod(name: str, image: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"imagePullSecrets": [{"name": "regcred"}],
                     "containers": [{"name": "app", "image": image}]}}  # fmt: skip


def _findings(farm: Farm, digest: str) -> set[tuple[str, str, str, str]]:
    rows = farm.query(
        """SELECT f.vulnerability_id, f.package, f.severity, f.fixed_version
             FROM findings f JOIN scans s ON s.id = f.scan_id
            WHERE s.digest = %s AND s.status = 'succeeded'""",
        digest,
    )
    return {(str(a), str(b), str(c), str(d)) for a, b, c, d in rows}


def _finished(farm: Farm, count: int) -> dict[str, tuple[Any, ...]]:
    return farm.wait_for(
        lambda: (
            (s := farm.query("SELECT digest, status, mode, error FROM scans"))
            and len(s) == count
            and all(row[1] not in ("pending", "running") for row in s)
            and {row[0]: row[1:] for row in s}
        ),
        timeout=120,
        what=f"{count} finished scan(s)",
    )


def test_findings_are_the_dbs_advisories_and_one_more_advisory_is_one_new_finding(
    farm: Farm,
) -> None:
    sim = farm.clusters["alpha"]
    sim.set_advisories(trivy_fixtures.ADVISORIES)
    farm.cluster_options["trivy_server"] = sim.trivy_server()
    scan_args: list[list[str]] = []  # the scan Jobs' Trivy arguments, as created

    def created(event: Any) -> None:
        if event.resource == "jobs.batch" and event.type == "ADDED":
            pod = event.obj["spec"]["template"]["spec"]
            scan_args.append([str(a) for c in pod["containers"] for a in c.get("args", [])])

    sim.cluster.listeners.append(created)
    host = farm.registry.host
    first = farm.registry.push("team/real", "1", content="real v1", contents=IMAGES["debian"])
    for obj in _objects(host):
        sim.create(obj)
    sim.set_digest(f"{host}/team/real:1", first)  # what the node pulled
    sim.create(_pod("v1", f"{host}/team/real:1"))
    farm.start()
    scans = _finished(farm, 1)
    assert scans[first][:2] == ("succeeded", "registry"), scans
    # read off tests/data/advisories/basic.yaml: libssl3 via its source openssl (fixed),
    # libc6 via glibc (no fix: empty fixed version), requests (pip)
    assert _findings(farm, first) == EXPECTED["debian"]
    severity = farm.query("SELECT severity FROM vulnerabilities WHERE id = 'CVE-2099-2001'")
    assert severity == [("MEDIUM",)]

    # one more advisory, for a package the image has and nothing matched so far
    more = trivydb.Advisory("debian 12", "bash", "CVE-2099-2999", "HIGH", fixed="5.2.15-3")
    sim.set_advisories(trivydb.load(trivy_fixtures.ADVISORIES).plus(more))
    second = farm.registry.push("team/real", "2", content="real v2", contents=IMAGES["debian"])
    sim.set_digest(f"{host}/team/real:2", second)
    sim.create(_pod("v2", f"{host}/team/real:2"))
    scans = _finished(farm, 2)
    assert scans[second][:2] == ("succeeded", "registry"), scans
    added = ("CVE-2099-2999", "bash", "HIGH", "5.2.15-3")
    assert _findings(farm, second) == EXPECTED["debian"] | {added}
    changes = farm.query(
        """SELECT change, vulnerability_id, package FROM finding_changes
            WHERE repository = 'team/real'"""
    )
    assert changes == [("new", "CVE-2099-2999", "bash")]
    # rescans are off: no SBOM to keep, so Trivy was not asked to list every package (and
    # the findings above are complete without)
    assert len(scan_args) == 2 and all("--list-all-pkgs" not in a for a in scan_args)
