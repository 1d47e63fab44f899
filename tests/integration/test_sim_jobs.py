"""The emulator's Job controller and kubelet, against the real private registry.

Scan Jobs follow the scan pod contract (interfaces: "Scan pod contract"):
container "trivy", command ["trivy"], the target pinned by digest as the last
argument, the credential only through ``secretKeyRef``. The kubelet really
pulls the manifest with skopeo, so a wrong password is refused by the
registry itself.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import services
from tests.support.sim_fixtures import SimCluster

REPORTS = Path(__file__).parent.parent / "data" / "trivy"
SCAN_NS = "scanqueue-scans"
TRIVY = "aquasec/trivy:0.76.0"


def scan_job(
    name: str,
    target: str,
    *,
    secret: str | None = None,
    token: bool = False,
    suspend: bool = True,
    deadline: int = 600,
    ttl: int | None = None,
) -> dict[str, Any]:
    env: list[dict[str, Any]] = []
    if secret is not None and token:
        env.append(
            {
                "name": "TRIVY_REGISTRY_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}},
            }
        )
    elif secret is not None:
        env += [
            {
                "name": "TRIVY_USERNAME",
                "valueFrom": {"secretKeyRef": {"name": secret, "key": "username"}},
            },
            {
                "name": "TRIVY_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}},
            },
        ]
    labels = {"app.kubernetes.io/managed-by": "scanqueue", "scanqueue.io/scan-id": name}
    spec: dict[str, Any] = {
        "suspend": suspend,
        "backoffLimit": 0,
        "activeDeadlineSeconds": deadline,
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "trivy",
                        "image": TRIVY,
                        "command": ["trivy"],
                        "args": [
                            "image",
                            "--format",
                            "json",
                            "--quiet",
                            "--timeout",
                            "120s",
                            target,
                        ],
                        "env": env,
                    }
                ],
            },
        },
    }
    if ttl is not None:
        spec["ttlSecondsAfterFinished"] = ttl
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }


def credential_secret(name: str, job: Any, data: dict[str, str]) -> client.V1Secret:
    return client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=name,
            owner_references=[
                client.V1OwnerReference(
                    api_version="batch/v1",
                    kind="Job",
                    name=job.metadata.name,
                    uid=job.metadata.uid,
                    controller=False,
                    block_owner_deletion=True,
                )
            ],
        ),
        string_data=data,
    )


def finished(sim: SimCluster, name: str, timeout: float = 60) -> Any:
    batch = sim.batch()

    def done() -> Any:
        job = batch.read_namespaced_job(name, SCAN_NS)
        for condition in job.status.conditions or []:
            if condition.type in ("Complete", "Failed") and condition.status == "True":
                return job
        return None

    return sim.wait_for(done, timeout=timeout, what=f"job {name} finished")


def job_pod(sim: SimCluster, name: str) -> Any:
    pods = sim.core().list_namespaced_pod(SCAN_NS, label_selector=f"job-name={name}").items
    assert len(pods) == 1
    return pods[0]


def resume(sim: SimCluster, name: str) -> None:
    sim.batch().patch_namespaced_job(name, SCAN_NS, {"spec": {"suspend": False}})


@pytest.fixture
def scans(sim: SimCluster) -> SimCluster:
    sim.core().create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=SCAN_NS)))
    return sim


@pytest.fixture(scope="module")
def pushed(registry: services.Registry) -> tuple[str, str]:
    """An image in the private registry: (reference pinned by digest, digest)."""
    digest = registry.push("team/app", "1", content="sim-jobs")
    return f"{registry.host}/team/app@{digest}", digest


def test_job_with_the_right_credential_completes_with_the_recorded_report(
    scans: SimCluster, pushed: tuple[str, str], registry: services.Registry
) -> None:
    sim = scans
    target, digest = pushed
    report = REPORTS / "node-alpine-3.19.json"
    sim.set_report(digest, report)
    job = sim.batch().create_namespaced_job(
        SCAN_NS, scan_job("scan-ok", target, secret="scan-ok-cred")
    )
    assert sim.core().list_namespaced_pod(SCAN_NS).items == []  # suspended: no pod yet
    sim.core().create_namespaced_secret(
        SCAN_NS,
        credential_secret(
            "scan-ok-cred", job, {"username": REGISTRY_USER, "password": REGISTRY_PASSWORD}
        ),
    )
    seen_before = len(registry.access_log())
    resume(sim, "scan-ok")
    done = finished(sim, "scan-ok")
    assert [c.type for c in done.status.conditions if c.status == "True"] == ["Complete"]
    assert done.status.succeeded == 1
    pod = job_pod(sim, "scan-ok")
    assert pod.status.phase == "Succeeded"
    assert pod.metadata.labels["job-name"] == "scan-ok"
    assert pod.metadata.labels["controller-uid"] == job.metadata.uid
    assert pod.metadata.owner_references[0].uid == job.metadata.uid
    assert pod.metadata.owner_references[0].controller is True
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    log = sim.core().read_namespaced_pod_log(pod.metadata.name, SCAN_NS, container="trivy")
    assert log == report.read_text()
    # the kubelet really fetched the manifest, authenticated
    pulled = registry.access_log()[seen_before:]
    assert f'"GET /v2/team/app/manifests/{digest} HTTP/1.1" 200' in pulled


def test_job_with_a_wrong_password_fails_with_trivys_unauthorized_error(
    scans: SimCluster, pushed: tuple[str, str]
) -> None:
    sim = scans
    target, _ = pushed
    canary = "canary-wrong-pw-5e2b"
    job = sim.batch().create_namespaced_job(
        SCAN_NS, scan_job("scan-bad", target, secret="scan-bad-cred")
    )
    sim.core().create_namespaced_secret(
        SCAN_NS,
        credential_secret("scan-bad-cred", job, {"username": REGISTRY_USER, "password": canary}),
    )
    resume(sim, "scan-bad")
    done = finished(sim, "scan-bad")
    failed = [c for c in done.status.conditions if c.type == "Failed"]
    assert failed and failed[0].reason == "BackoffLimitExceeded"
    pod = job_pod(sim, "scan-bad")
    assert pod.status.phase == "Failed"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 1
    log = sim.core().read_namespaced_pod_log(pod.metadata.name, SCAN_NS)
    assert "UNAUTHORIZED: authentication required" in log
    assert canary not in log
    everything = json.dumps(
        [sim.api_client().sanitize_for_serialization(o) for o in (pod, done)]
        + [
            sim.api_client().sanitize_for_serialization(e)
            for e in sim.core().list_namespaced_event(SCAN_NS).items
        ]
    )
    assert canary not in everything


def test_anonymous_pull_from_the_private_registry_is_refused(
    scans: SimCluster, pushed: tuple[str, str]
) -> None:
    sim = scans
    target, _ = pushed
    sim.batch().create_namespaced_job(SCAN_NS, scan_job("scan-anon", target, suspend=False))
    finished(sim, "scan-anon")
    pod = job_pod(sim, "scan-anon")
    assert "UNAUTHORIZED" in sim.core().read_namespaced_pod_log(pod.metadata.name, SCAN_NS)


def test_missing_secret_blocks_the_pod_until_the_job_deadline(
    scans: SimCluster, pushed: tuple[str, str]
) -> None:
    sim = scans
    target, _ = pushed
    sim.batch().create_namespaced_job(
        SCAN_NS, scan_job("scan-nosecret", target, secret="absent", suspend=False, deadline=2)
    )

    def waiting_reason() -> Any:
        pods = (
            sim.core().list_namespaced_pod(SCAN_NS, label_selector="job-name=scan-nosecret").items
        )
        statuses = pods[0].status.container_statuses if pods else None
        return statuses and statuses[0].state.waiting and statuses[0].state.waiting.reason

    assert sim.wait_for(waiting_reason, what="pod waiting") == "CreateContainerConfigError"
    pod = job_pod(sim, "scan-nosecret")
    assert pod.status.phase == "Pending"
    assert pod.status.container_statuses[0].state.waiting.message == 'secret "absent" not found'
    with pytest.raises(client.ApiException) as caught:
        sim.core().read_namespaced_pod_log(pod.metadata.name, SCAN_NS)
    assert caught.value.status == 400
    done = finished(sim, "scan-nosecret")
    failed = [c for c in done.status.conditions if c.type == "Failed"]
    assert failed[0].reason == "DeadlineExceeded"
    sim.wait_for(
        lambda: not sim.core().list_namespaced_pod(SCAN_NS).items, what="active pod deleted"
    )


def _with_ca_volume(job: dict[str, Any], configmap: str) -> dict[str, Any]:
    """``job`` mounting ConfigMap ``configmap``'s ca.crt, as a cluster's ca_bundle_configmap."""
    pod = job["spec"]["template"]["spec"]
    items = [{"key": "ca.crt", "path": "ca.crt"}]
    pod["volumes"] = [{"name": "ca", "configMap": {"name": configmap, "items": items}}]
    pod["containers"][0]["volumeMounts"] = [
        {"name": "ca", "mountPath": "/etc/scanqueue/ca", "readOnly": True}
    ]
    return job


def _mount_events(sim: SimCluster, pod: str) -> list[str]:
    events = sim.core().list_namespaced_event(SCAN_NS).items
    return [e.message for e in events
            if e.involved_object.name == pod and e.reason == "FailedMount"]  # fmt: skip


def test_a_missing_configmap_volume_keeps_the_pod_creating_until_it_appears(
    scans: SimCluster, pushed: tuple[str, str], registry: services.Registry
) -> None:
    """As a kubelet: no failed pod, but ContainerCreating and FailedMount events, retried;
    the pod starts once the ConfigMap exists (with the key its items name)."""
    sim = scans
    target, digest = pushed
    sim.set_report(digest, REPORTS / "node-alpine-3.19.json")
    job = sim.batch().create_namespaced_job(SCAN_NS, _with_ca_volume(
        scan_job("scan-noca", target, secret="cred", suspend=False), "corp-ca"))  # fmt: skip
    sim.core().create_namespaced_secret(SCAN_NS, credential_secret(
        "cred", job, {"username": REGISTRY_USER, "password": REGISTRY_PASSWORD}))  # fmt: skip
    pod = sim.wait_for(lambda: sim.core().list_namespaced_pod(SCAN_NS).items, what="a pod")[0]
    name = pod.metadata.name
    expected = 'MountVolume.SetUp failed for volume "ca" : configmap "corp-ca" not found'
    sim.wait_for(lambda: len(_mount_events(sim, name)) >= 2, what="FailedMount, retried")
    assert set(_mount_events(sim, name)) == {expected}
    pod = job_pod(sim, "scan-noca")
    assert pod.status.phase == "Pending"
    assert pod.status.container_statuses[0].state.waiting.reason == "ContainerCreating"
    # a ConfigMap without the key its items name: still no mount
    sim.core().create_namespaced_config_map(SCAN_NS, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="corp-ca"), data={"other": "x"}))  # fmt: skip
    keyless = ('MountVolume.SetUp failed for volume "ca" : configmap references '
               "non-existent config key: ca.crt")  # fmt: skip
    sim.wait_for(lambda: keyless in _mount_events(sim, name), what="FailedMount for the key")
    assert job_pod(sim, "scan-noca").status.phase == "Pending"
    sim.core().patch_namespaced_config_map("corp-ca", SCAN_NS, {"data": {"ca.crt": "unused"}})
    done = finished(sim, "scan-noca")
    assert done.status.succeeded == 1


def test_a_configmap_that_never_comes_ends_the_job_at_its_deadline(
    scans: SimCluster, pushed: tuple[str, str]
) -> None:
    sim = scans
    target, _ = pushed
    sim.batch().create_namespaced_job(SCAN_NS, _with_ca_volume(
        scan_job("scan-never", target, suspend=False, deadline=2), "corp-ca"))  # fmt: skip
    done = finished(sim, "scan-never")
    failed = [c for c in done.status.conditions if c.type == "Failed"]
    assert failed[0].reason == "DeadlineExceeded"
    sim.wait_for(
        lambda: not sim.core().list_namespaced_pod(SCAN_NS).items, what="active pod deleted"
    )


def test_missing_key_is_a_create_container_config_error_naming_the_key(
    scans: SimCluster, pushed: tuple[str, str]
) -> None:
    sim = scans
    target, _ = pushed
    job = sim.batch().create_namespaced_job(
        SCAN_NS, scan_job("scan-nokey", target, secret="cred", suspend=False)
    )
    sim.core().create_namespaced_secret(
        SCAN_NS, credential_secret("cred", job, {"username": REGISTRY_USER})
    )

    def message() -> Any:
        pods = sim.core().list_namespaced_pod(SCAN_NS, label_selector="job-name=scan-nokey").items
        statuses = pods[0].status.container_statuses if pods else None
        waiting = statuses and statuses[0].state.waiting
        return waiting and "password" in (waiting.message or "") and waiting.message

    assert (
        sim.wait_for(message, what="config error")
        == f"couldn't find key password in Secret {SCAN_NS}/cred"
    )


def test_secret_created_after_the_pod_lets_it_start(
    scans: SimCluster, pushed: tuple[str, str]
) -> None:
    sim = scans
    target, _ = pushed
    job = sim.batch().create_namespaced_job(
        SCAN_NS, scan_job("scan-late", target, secret="late", suspend=False)
    )
    sim.wait_for(lambda: sim.core().list_namespaced_pod(SCAN_NS).items, what="pod created")
    sim.core().create_namespaced_secret(
        SCAN_NS,
        credential_secret("late", job, {"username": REGISTRY_USER, "password": REGISTRY_PASSWORD}),
    )
    done = finished(sim, "scan-late")
    assert done.status.succeeded == 1


def test_bearer_token_reaches_a_token_auth_registry(sim: SimCluster, token_world: Any) -> None:
    sim.core().create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=SCAN_NS)))
    digest = token_world.push("team/tok", "1", content="token-auth")
    token_world.issuer.users["reader"] = "reader-pw-1"
    token_world.issuer.grants["reader"] = {"team/tok": {"pull"}}
    request = urllib.request.Request(
        f"{token_world.issuer.realm}?service=scanqueue-test-registry&scope=repository:team/tok:pull"
    )
    request.add_header("Authorization", "Basic " + base64.b64encode(b"reader:reader-pw-1").decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        token = json.loads(response.read())["token"]
    target = f"{token_world.registry.host}/team/tok@{digest}"
    job = sim.batch().create_namespaced_job(
        SCAN_NS, scan_job("scan-token", target, secret="tok", token=True)
    )
    sim.core().create_namespaced_secret(SCAN_NS, credential_secret("tok", job, {"token": token}))
    resume(sim, "scan-token")
    assert finished(sim, "scan-token").status.succeeded == 1
    job2 = sim.batch().create_namespaced_job(
        SCAN_NS, scan_job("scan-token-bad", target, secret="tok2", token=True)
    )
    sim.core().create_namespaced_secret(
        SCAN_NS, credential_secret("tok2", job2, {"token": "not-a-token"})
    )
    resume(sim, "scan-token-bad")
    assert finished(sim, "scan-token-bad").status.failed == 1


def test_ttl_after_finished_deletes_the_job_its_pod_and_its_secret(
    scans: SimCluster, pushed: tuple[str, str]
) -> None:
    sim = scans
    target, _ = pushed
    job = sim.batch().create_namespaced_job(
        SCAN_NS, scan_job("scan-ttl", target, secret="ttl-cred", ttl=1)
    )
    sim.core().create_namespaced_secret(
        SCAN_NS,
        credential_secret(
            "ttl-cred", job, {"username": REGISTRY_USER, "password": REGISTRY_PASSWORD}
        ),
    )
    resume(sim, "scan-ttl")
    finished(sim, "scan-ttl")

    def all_gone() -> bool:
        return not (
            sim.batch().list_namespaced_job(SCAN_NS).items
            or sim.core().list_namespaced_pod(SCAN_NS).items
            or sim.core().list_namespaced_secret(SCAN_NS).items
        )

    sim.wait_for(all_gone, what="job, pod and secret deleted by the TTL")


def test_suspending_a_running_job_deletes_its_pod(
    sim_factory: Any, registry: services.Registry
) -> None:
    sim = sim_factory(real_pull=False)
    sim.core().create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=SCAN_NS)))
    body = scan_job("long", "127.0.0.1:1/x@sha256:" + "0" * 64, suspend=False)
    body["spec"]["template"]["spec"]["containers"][0]["command"] = [
        "sleep"
    ]  # not a scan: runs until stopped
    sim.batch().create_namespaced_job(SCAN_NS, body)
    sim.wait_for(
        lambda: sim.batch().read_namespaced_job("long", SCAN_NS).status.active == 1, what="active"
    )
    sim.batch().patch_namespaced_job("long", SCAN_NS, {"spec": {"suspend": True}})
    sim.wait_for(lambda: not sim.core().list_namespaced_pod(SCAN_NS).items, what="pod deleted")
    job = sim.batch().read_namespaced_job("long", SCAN_NS)
    assert [(c.type, c.reason) for c in job.status.conditions] == [("Suspended", "JobSuspended")]


def test_without_real_pulls_scans_succeed_at_once(sim_factory: Any) -> None:
    sim = sim_factory(real_pull=False)
    sim.core().create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=SCAN_NS)))
    target = "registry.invalid/team/app@sha256:" + "1" * 64
    sim.batch().create_namespaced_job(SCAN_NS, scan_job("fast", target, suspend=False))
    assert finished(sim, "fast").status.succeeded == 1
    log = sim.core().read_namespaced_pod_log(job_pod(sim, "fast").metadata.name, SCAN_NS)
    assert json.loads(log)["ArtifactName"] == target


def test_without_real_pulls_a_scan_pod_still_runs_before_it_succeeds(sim_factory: Any) -> None:
    # the recorded report is printed without a pool thread; the pod must still go through
    # the states a pulled scan's pod does, each its own change, in the same order
    sim = sim_factory(real_pull=False)
    core = sim.core()
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=SCAN_NS)))
    rv = core.list_namespaced_pod(SCAN_NS).metadata.resource_version
    target = "registry.invalid/team/app@sha256:" + "2" * 64
    sim.batch().create_namespaced_job(SCAN_NS, scan_job("steps", target, suspend=False))
    finished(sim, "steps")
    seen = [
        (e["type"], e["object"].status.phase, bool(e["object"].spec.node_name))
        for e in watch.Watch().stream(
            core.list_namespaced_pod, SCAN_NS, resource_version=rv, timeout_seconds=1
        )
    ]
    assert seen == [
        ("ADDED", "Pending", False),
        ("MODIFIED", "Pending", True),  # scheduled
        ("MODIFIED", "Running", True),
        ("MODIFIED", "Succeeded", True),
    ]
    pod = job_pod(sim, "steps")
    (status,) = pod.status.container_statuses
    terminated = status.state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert terminated.started_at <= terminated.finished_at
    assert json.loads(core.read_namespaced_pod_log(pod.metadata.name, SCAN_NS))["ArtifactName"] == (
        target
    )


# ------------------------------------------------------------------ node mode


def node_scan_job(name: str, image: str, node: str, *, deadline: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeName": node,
                    "volumes": [{"name": "scanqueue", "emptyDir": {}}],
                    "initContainers": [
                        {
                            "name": "trivy-copy",
                            "image": TRIVY,
                            "command": ["cp", "-v", "/usr/local/bin/trivy", "/var/scanqueue/trivy"],
                            "volumeMounts": [{"name": "scanqueue", "mountPath": "/var/scanqueue"}],
                        }
                    ],
                    "containers": [
                        {
                            "name": "trivy",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["/var/scanqueue/trivy"],
                            "args": ["rootfs", "--format", "json", "--quiet", "/"],
                            "securityContext": {"runAsUser": 0},
                            "volumeMounts": [{"name": "scanqueue", "mountPath": "/var/scanqueue"}],
                        }
                    ],
                },
            },
        },
    }


def test_node_mode_succeeds_only_on_the_node_that_runs_the_image(sim_factory: Any) -> None:
    sim = sim_factory(nodes=("node-1", "node-2"))
    core = sim.core()
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=SCAN_NS)))
    digest = "sha256:" + "ab" * 32
    image = f"registry.example.com/team/app@{digest}"
    report = REPORTS / "ecr-private-alpine-3.19.json"
    sim.set_report(digest, report)
    core.create_namespaced_pod(
        "default",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "workload"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": image}]},
        },
    )
    sim.wait_for(
        lambda: core.read_namespaced_pod("workload", "default").status.phase == "Running",
        what="run",
    )
    assert (
        core.read_namespaced_pod("workload", "default")
        .status.container_statuses[0]
        .image_id.endswith(digest)
    )

    sim.batch().create_namespaced_job(SCAN_NS, node_scan_job("on-node-1", image, "node-1"))
    assert finished(sim, "on-node-1").status.succeeded == 1
    log = core.read_namespaced_pod_log(
        job_pod(sim, "on-node-1").metadata.name, SCAN_NS, container="trivy"
    )
    assert log == report.read_text()

    sim.batch().create_namespaced_job(SCAN_NS, node_scan_job("on-node-2", image, "node-2"))

    def waiting() -> Any:
        pods = core.list_namespaced_pod(SCAN_NS, label_selector="job-name=on-node-2").items
        statuses = pods[0].status.container_statuses if pods else None
        return statuses and statuses[0].state.waiting and statuses[0].state.waiting.reason

    assert sim.wait_for(waiting, what="ErrImageNeverPull") == "ErrImageNeverPull"
    done = finished(sim, "on-node-2")
    assert [c.reason for c in done.status.conditions if c.type == "Failed"] == ["DeadlineExceeded"]


def test_failed_pods_are_retried_up_to_the_backoff_limit(
    scans: SimCluster, pushed: tuple[str, str]
) -> None:
    sim = scans
    target, _ = pushed
    body = scan_job("scan-retry", target, secret="retry", suspend=False)
    body["spec"]["backoffLimit"] = 1
    job = sim.batch().create_namespaced_job(SCAN_NS, body)
    sim.core().create_namespaced_secret(
        SCAN_NS, credential_secret("retry", job, {"username": "nobody", "password": "wrong"})
    )
    done = finished(sim, "scan-retry")
    assert done.status.failed == 2
    assert [c.reason for c in done.status.conditions if c.type == "Failed"] == [
        "BackoffLimitExceeded"
    ]
    pods = sim.core().list_namespaced_pod(SCAN_NS, label_selector="job-name=scan-retry").items
    assert sorted(p.status.phase for p in pods) == ["Failed", "Failed"]


def test_a_job_managed_by_another_controller_is_left_alone(sim_factory: Any) -> None:
    sim = sim_factory(real_pull=False)
    body = scan_job("elsewhere", "r.example.com/a@sha256:" + "2" * 64, suspend=False)
    body["spec"]["managedBy"] = "example.com/multikueue"
    sim.batch().create_namespaced_job("default", body)
    sim.batch().create_namespaced_job(
        "default", scan_job("here", "r.example.com/a@sha256:" + "2" * 64, suspend=False)
    )
    sim.wait_for(
        lambda: sim.batch().read_namespaced_job("here", "default").status.succeeded,
        what="here done",
    )
    assert (
        sim.core().list_namespaced_pod("default", label_selector="job-name=elsewhere").items == []
    )
    assert not sim.batch().read_namespaced_job("elsewhere", "default").status.start_time


def test_a_recording_prints_packages_only_when_trivy_is_asked_to_list_them(
    sim_factory: Any,
) -> None:
    # Trivy writes a result's Packages only with --list-all-pkgs: a recording made with it
    # loses them when a Job does not ask; the rest stays, byte-order mark and CRLF included
    sim = sim_factory(real_pull=False)
    sim.core().create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=SCAN_NS)))
    recorded = REPORTS / "python-debian-12-bom-crlf.json"
    logs = {}
    for name, listing in (("plain", False), ("listed", True)):
        target = f"registry.invalid/team/{name}@sha256:" + ("3" if listing else "4") * 64
        sim.set_report(target, recorded)
        job = scan_job(name, target, suspend=False)
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        if listing:
            args.insert(-1, "--list-all-pkgs")
        sim.batch().create_namespaced_job(SCAN_NS, job)
        finished(sim, name)
        pod = job_pod(sim, name).metadata.name
        logs[name] = sim.core().read_namespaced_pod_log(pod, SCAN_NS, _preload_content=False).data
    assert logs["listed"] == recorded.read_bytes()
    plain = logs["plain"]
    assert (
        plain.startswith(b"\xef\xbb\xbf")
        and b"\r\n" in plain
        and b"\n" not in plain.replace(b"\r\n", b"")
    )
    expected = json.loads(recorded.read_bytes().decode("utf-8-sig"))
    assert all("Packages" in r for r in expected["Results"])  # the recording lists them
    for result in expected["Results"]:
        del result["Packages"]
    assert json.loads(plain.decode("utf-8-sig")) == expected
