"""The emulated kubelet runs our real scan Jobs (manifests.scan_job) with the real Trivy:
findings come from the test DB's advisories, credentials from the Secret at pod start,
node mode from the image's own files; a broken flag or variable fails the scan."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from scanqueue import config, manifests
from scanqueue.sim import trivydb
from scanqueue.sim.apierrors import ApiError
from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import trivy_fixtures
from tests.support.sim_fixtures import SimCluster
from tests.support.trivy_fixtures import EXPECTED, IMAGES, findings

NS = "scans"


def _spec(image: str, digest: str, **changes: Any) -> manifests.ScanSpec:
    cluster = config.ClusterSettings(name="c1", kubeconfig="/k", scan_namespace=NS,
                                     **changes.pop("cluster", {}))  # fmt: skip
    values: dict[str, Any] = {
        "cluster": cluster,
        "scan": config.ScanSettings(job_deadline_seconds=120, job_ttl_seconds=3600),
        "image": image,
        "digest": digest,
        "mode": "registry",
        "scan_id": "s1",
        "attempt": changes.pop("attempt", 1),
        "credential": "basic",
    }
    values.update(changes)
    return manifests.ScanSpec(**values)


def _run(sim: SimCluster, spec: manifests.ScanSpec, secret: dict[str, str] | None = None,
         *, edit: Any = None) -> tuple[str, str]:  # fmt: skip
    """Create the Job (and its Secret), resume it; return (pod phase, pod log)."""
    job = manifests.scan_job(spec)
    if edit is not None:
        edit(job)
    created = sim.create(job)
    if secret is not None:
        body = {k: base64.b64encode(v.encode()).decode() for k, v in secret.items()}
        sim.create({"apiVersion": "v1", "kind": "Secret", "metadata": {
            "name": spec.secret_name, "namespace": NS, "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": spec.job_name,
                "uid": created["metadata"]["uid"], "controller": True}]},
            "data": body})  # fmt: skip
    _resume(sim, spec.job_name)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        pods = [
            p
            for p in sim.list("Pod", NS)
            if (p["metadata"].get("labels") or {}).get("job-name") == spec.job_name
        ]
        if pods and pods[0]["status"].get("phase") in ("Succeeded", "Failed"):
            pod = pods[0]
            log = sim.pod_log(NS, pod["metadata"]["name"], manifests.CONTAINER) or ""
            return pod["status"]["phase"], log
        time.sleep(0.1)
    raise AssertionError(f"scan pod of {spec.job_name} did not finish")


def _resume(sim: SimCluster, name: str) -> None:
    """Unsuspend the Job; a 409 (the Job controller wrote its status meanwhile) is
    retried with the fresh object, as the workers and kubectl do."""
    for _ in range(20):
        job = sim.get("Job", NS, name)
        assert job is not None
        job["spec"]["suspend"] = False
        try:
            sim.replace(job)
            return
        except ApiError as e:
            if e.code != 409:
                raise
    raise AssertionError(f"Job {name} kept conflicting")


@pytest.fixture
def scan_sim(sim: SimCluster) -> SimCluster:
    sim.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    sim.set_advisories(trivy_fixtures.ADVISORIES)
    return sim


def _push(sim: SimCluster, name: str, image: str) -> tuple[str, str]:
    registry = sim.registry
    digest = registry.push(name, "1", contents=IMAGES[image])
    return f"{registry.host}/{name}", digest


GOOD = {manifests.KEY_USERNAME: REGISTRY_USER, manifests.KEY_PASSWORD: REGISTRY_PASSWORD}


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_registry_scan_reports_exactly_the_advisories_of_the_db(
    scan_sim: SimCluster, image: str
) -> None:
    repo, digest = _push(scan_sim, f"team/{image}", image)
    phase, log = _run(scan_sim, _spec(repo, digest), GOOD)
    assert phase == "Succeeded", log
    report = json.loads(log)
    assert findings(report) == EXPECTED[image]
    assert report["ArtifactName"] == f"{repo}@{digest}"


def test_client_server_mode_reports_the_same(scan_sim: SimCluster) -> None:
    repo, digest = _push(scan_sim, "team/server", "debian")
    spec = _spec(repo, digest, cluster={"trivy_server": scan_sim.trivy_server()})
    assert (
        "--server" in manifests.scan_job(spec)["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    phase, log = _run(scan_sim, spec, GOOD)
    assert phase == "Succeeded", log
    assert findings(json.loads(log)) == EXPECTED["debian"]


def test_one_more_advisory_gives_exactly_one_more_finding(scan_sim: SimCluster) -> None:
    repo, digest = _push(scan_sim, "team/more", "alpine")
    more = trivydb.Advisory("alpine 3.19", "zlib", "CVE-2099-1999", "MEDIUM", fixed="1.3.1-r1")
    scan_sim.set_advisories(trivydb.load(trivy_fixtures.ADVISORIES).plus(more))
    phase, log = _run(scan_sim, _spec(repo, digest), GOOD)
    assert phase == "Succeeded", log
    assert findings(json.loads(log)) == EXPECTED["alpine"] | {
        ("CVE-2099-1999", "zlib", "MEDIUM", "1.3.1-r1")
    }


def test_wrong_password_fails_with_trivys_own_unauthorized(scan_sim: SimCluster) -> None:
    repo, digest = _push(scan_sim, "team/refused", "alpine")
    bad = {**GOOD, manifests.KEY_PASSWORD: "wrong-password-1"}
    phase, log = _run(scan_sim, _spec(repo, digest), bad)
    assert phase == "Failed"
    assert "UNAUTHORIZED: authentication required" in log
    assert "wrong-password-1" not in log


@pytest.mark.parametrize("variable", ["TRIVY_USERNAME", "TRIVY_PASSWORD"])
def test_a_renamed_credential_variable_fails_the_scan(scan_sim: SimCluster, variable: str) -> None:
    repo, digest = _push(scan_sim, "team/renamed", "alpine")

    def rename(job: dict[str, Any]) -> None:
        for var in job["spec"]["template"]["spec"]["containers"][0]["env"]:
            if var["name"] == variable:
                var["name"] = variable.replace("TRIVY_", "TRIVY_X_")

    phase, log = _run(scan_sim, _spec(repo, digest), GOOD, edit=rename)
    assert phase == "Failed"
    assert "the number of usernames and passwords must match" in log  # Trivy's own words


def test_a_wrong_flag_fails_the_scan(scan_sim: SimCluster) -> None:
    repo, digest = _push(scan_sim, "team/flag", "alpine")

    def typo(job: dict[str, Any]) -> None:
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        args[args.index("--cache-dir")] = "--cache-directory"

    phase, log = _run(scan_sim, _spec(repo, digest), GOOD, edit=typo)
    assert phase == "Failed"
    assert "unknown flag: --cache-directory" in log


def test_node_mode_finds_the_same_as_registry_mode_without_a_secret(scan_sim: SimCluster) -> None:
    repo, digest = _push(scan_sim, "team/on-node", "debian")
    host = repo.split("/", 1)[0]
    scan_sim.trivy.node_auth[host] = (REGISTRY_USER, REGISTRY_PASSWORD)  # the node's own login
    app = {"name": "app", "image": f"{repo}@{digest}"}
    scan_sim.create({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": "app", "namespace": NS},
                     "spec": {"nodeName": "node-1", "containers": [app]}})  # fmt: skip
    scan_sim.wait_for(
        lambda: (scan_sim.get("Pod", NS, "app") or {}).get("status", {}).get("phase") == "Running",
        timeout=30,
    )
    spec = _spec(repo, digest, mode="node", node_name="node-1", credential=None)
    phase, log = _run(scan_sim, spec)
    assert phase == "Succeeded", log
    assert findings(json.loads(log)) == EXPECTED["debian"]
    assert scan_sim.list("Secret", NS) == []
    _, registry_log = _run(scan_sim, _spec(repo, digest, attempt=2), GOOD)
    assert findings(json.loads(registry_log)) == findings(json.loads(log))


def test_missing_secret_key_keeps_the_pod_waiting(scan_sim: SimCluster) -> None:
    repo, digest = _push(scan_sim, "team/nokey", "alpine")
    spec = _spec(repo, digest)
    job = scan_sim.create(manifests.scan_job(spec))
    scan_sim.create({"apiVersion": "v1", "kind": "Secret",
                     "metadata": {"name": spec.secret_name, "namespace": NS},
                     "data": {"username": base64.b64encode(b"alice").decode()}})  # fmt: skip
    assert job["spec"]["suspend"] is True
    _resume(scan_sim, spec.job_name)

    def waiting() -> bool:
        for pod in scan_sim.list("Pod", NS):
            for status in pod["status"].get("containerStatuses") or []:
                reason = (status["state"].get("waiting") or {}).get("reason")
                if reason == "CreateContainerConfigError":
                    return True
        return False

    scan_sim.wait_for(waiting, timeout=30)


def test_ca_bundle_from_a_configmap_reaches_trivys_cacert(scan_sim: SimCluster) -> None:
    from tests.support.registry_fixtures import self_signed

    repo, digest = _push(scan_sim, "team/ca", "alpine")
    _, pem, _ = self_signed("internal CA")
    scan_sim.create({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "internal-ca", "namespace": NS},
                     "data": {"ca.crt": pem.decode()}})  # fmt: skip
    spec = _spec(repo, digest, cluster={"ca_bundle_configmap": "internal-ca"})
    phase, log = _run(scan_sim, spec, GOOD)
    assert phase == "Succeeded", log
    assert findings(json.loads(log)) == EXPECTED["alpine"]
    # a bundle that is not PEM fails the scan: Trivy really reads the mounted file
    scan_sim.replace({**scan_sim.get("ConfigMap", NS, "internal-ca"), "data": {"ca.crt": "junk"}})
    again = _spec(repo, digest, attempt=2, cluster={"ca_bundle_configmap": "internal-ca"})
    phase, log = _run(scan_sim, again, GOOD)
    assert phase == "Failed", log


def test_db_repository_is_where_a_standalone_scan_pod_gets_its_db(scan_sim: SimCluster) -> None:
    repo, digest = _push(scan_sim, "team/mirrored", "alpine")
    host = repo.split("/", 1)[0]
    # the mirror holds a DB with one advisory more than the world's: the pod must use it
    more = trivydb.Advisory("alpine 3.19", "zlib", "CVE-2099-1888", "LOW", fixed="1.3.1-r9")
    trivydb.push(trivydb.load(trivy_fixtures.ADVISORIES).plus(more), f"{host}/mirror/trivy-db:2",
                 username=REGISTRY_USER, password=REGISTRY_PASSWORD)  # fmt: skip
    spec = _spec(repo, digest, cluster={"trivy_db_repository": f"{host}/mirror/trivy-db:2"})
    phase, log = _run(scan_sim, spec, GOOD)
    assert phase == "Succeeded", log
    assert findings(json.loads(log)) == EXPECTED["alpine"] | {
        ("CVE-2099-1888", "zlib", "LOW", "1.3.1-r9")
    }
