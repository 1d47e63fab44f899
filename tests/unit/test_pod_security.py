"""Pod Security Standards: every pod we build or ship is admitted where it runs.

kube-apiserver refuses a pod that breaks the level its namespace enforces; the
emulator does not implement that plug-in, so ``tests.support.pod_security``
applies the rules here, to the scan pods ``manifests`` builds (every variant,
both modes) and to every workload of ``deploy/``. The first tests guard the
checker itself: each rule refuses what it must.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from scanqueue import config, manifests
from tests.support import pod_security

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DIGEST = "sha256:" + "cd" * 32
CLUSTER = config.ClusterSettings(name="c1", kubeconfig="/k", scan_namespace="scanqueue-scans")
SCAN = config.ScanSettings()


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                out.append((str(path.relative_to(ROOT)), doc))
    return out


DOCS = _docs()
NAMESPACES = {d["metadata"]["name"]: d for _, d in DOCS if d["kind"] == "Namespace"}


def _level(namespace: str) -> str:
    return pod_security.level_of(NAMESPACES[namespace])


def _scan_pod(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "cluster": CLUSTER,
        "scan": SCAN,
        "image": "registry.example.com/team/app",
        "digest": DIGEST,
        "mode": "registry",
        "scan_id": "s1",
        "attempt": 0,
        "credential": "basic",
    }
    values.update(changes)
    job = manifests.scan_job(manifests.ScanSpec(**values))
    assert job["metadata"]["namespace"] == "scanqueue-scans"
    return job["spec"]["template"]


NODE = {"mode": "node", "credential": None, "node_name": "node-1"}
SERVER = dataclasses.replace(
    CLUSTER, trivy_server="http://trivy-server.scanqueue.svc:4954", trivy_server_token_secret="t"
)
VARIANTS = {
    "basic": {},
    "token": {"credential": "token"},
    "anonymous": {"credential": None},
    "server": {"cluster": SERVER},
    "insecure": {"scan": dataclasses.replace(SCAN, insecure_registries=("registry.example.com",))},
    "node": NODE,
    "node-server": {**NODE, "cluster": SERVER},
    "node-userns": {**NODE, "cluster": dataclasses.replace(CLUSTER, scan_user_namespaces=True)},
    "ca-bundle": {"cluster": dataclasses.replace(CLUSTER, ca_bundle_configmap="corp-ca")},
    "node-ca-bundle": {
        **NODE,
        "cluster": dataclasses.replace(CLUSTER, ca_bundle_configmap="corp-ca"),
    },
}


# --- the checker refuses what each level refuses ------------------------------------------


def _good_restricted_pod() -> dict[str, Any]:
    return copy.deepcopy(_scan_pod()["spec"])


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (lambda p: p.update(hostPID=True), "host namespaces"),
        (lambda p: p.update(hostNetwork=True), "host namespaces"),
        (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "privileged"),
        (
            lambda p: p["containers"][0]["securityContext"]["capabilities"].update(
                add=["SYS_ADMIN"]
            ),
            "capabilities",
        ),
        (lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
        (
            lambda p: p["containers"][0].update(ports=[{"containerPort": 1, "hostPort": 80}]),
            "host ports",
        ),
        (
            lambda p: p["securityContext"].update(seccompProfile={"type": "Unconfined"}),
            "seccomp",
        ),
        (
            lambda p: p["securityContext"].update(
                sysctls=[{"name": "kernel.msgmax", "value": "1"}]
            ),
            "sysctls",
        ),
        (
            lambda p: p["containers"][0]["securityContext"].update(procMount="Unmasked"),
            "/proc mount",
        ),
        (
            lambda p: p["securityContext"].update(seLinuxOptions={"type": "spc_t"}),
            "SELinux",
        ),
    ],
)
def test_checker_refuses_what_baseline_refuses(change: Any, rule: str) -> None:
    pod = _good_restricted_pod()
    assert pod_security.violations(pod, "baseline") == []
    change(pod)
    found = pod_security.violations(pod, "baseline")
    assert found and all(line.startswith(rule) for line in found), found
    assert pod_security.violations(pod, "privileged") == []


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (lambda p: p["containers"][0]["securityContext"].update(runAsUser=0), "running as"),
        (
            lambda p: [
                p["securityContext"].pop("runAsNonRoot"),
                p["containers"][0]["securityContext"].pop("runAsNonRoot"),
            ],
            "running as non-root",
        ),
        (
            lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
            "privilege escalation",
        ),
        (
            lambda p: p["containers"][0]["securityContext"]["capabilities"].update(
                drop=["NET_RAW"]
            ),
            "capabilities",
        ),
        (
            lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["CHOWN"]),
            "capabilities",
        ),
        (lambda p: p["securityContext"].pop("seccompProfile"), "seccomp"),
        (
            lambda p: p["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
            "volume",
        ),
    ],
)
def test_checker_refuses_what_restricted_refuses_beyond_baseline(change: Any, rule: str) -> None:
    pod = _good_restricted_pod()
    assert pod_security.violations(pod, "restricted") == []
    change(pod)
    found = pod_security.violations(pod, "restricted")
    assert found and all(line.startswith(rule) for line in found), found
    assert pod_security.violations(pod, "baseline") == []


# --- the namespaces -------------------------------------------------------------------------


def test_the_scan_namespace_enforces_baseline_and_warns_at_restricted() -> None:
    labels = NAMESPACES["scanqueue-scans"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"


def test_the_farm_namespace_enforces_restricted() -> None:
    assert _level("scanqueue") == "restricted"


# --- the pods we build and ship ----------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_every_scan_pod_is_admitted_by_the_scan_namespace(variant: str) -> None:
    template = _scan_pod(**VARIANTS[variant])
    level = _level("scanqueue-scans")
    assert level != "privileged"
    assert pod_security.violations(template["spec"], level, metadata=template["metadata"]) == []


@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v.startswith("node")])
def test_registry_mode_scan_pods_meet_restricted(variant: str) -> None:
    """So a farm with scan_mode = "registry" everywhere may enforce restricted (docs/rbac.md)."""
    assert pod_security.violations(_scan_pod(**VARIANTS[variant])["spec"], "restricted") == []


def test_node_mode_breaks_restricted_only_by_running_as_root_with_dac_override() -> None:
    found = pod_security.violations(_scan_pod(**NODE)["spec"], "restricted")
    assert sorted(found) == sorted(
        [
            "running as non-root: containers[trivy] runAsNonRoot is not true",
            "running as non-root user: containers[trivy] runAsUser = 0",
            "capabilities: containers[trivy] adds DAC_OVERRIDE (restricted allows none)",
        ]
    )


def _workloads() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for path, doc in DOCS:
        if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            out.append((f"{path}:{doc['metadata']['name']}", doc["metadata"]["namespace"], doc))
    return out


@pytest.mark.parametrize(
    ("where", "namespace", "doc"), _workloads(), ids=[w for w, _, _ in _workloads()]
)
def test_every_shipped_workload_is_admitted_by_its_namespace(
    where: str, namespace: str, doc: dict[str, Any]
) -> None:
    template = doc["spec"]["template"]
    level = _level(namespace)
    assert pod_security.violations(template["spec"], level, metadata=template.get("metadata")) == []
