"""Scenarios and ``scanqueue sim serve``: a declared cluster, seen through the official client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from scanqueue import demo_env
from scanqueue.sim import imagefs, scenario
from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import services, trivy_fixtures
from tests.support.sim_fixtures import SimCluster

PUBLIC = "docker.io/library/busybox:1.36"
PUBLIC_DIGEST = "sha256:" + "b" * 64
REPORTS = Path(scenario.__file__).parent / "data" / "reports"


@pytest.fixture(scope="module")
def demo_images(registry: services.Registry) -> dict[str, str]:
    """The demo's private images pushed to the registry: reference -> digest."""
    images = {}
    for repository, tag in (
        ("team-a/web", "1.0"),
        ("payments/api", "2.3"),
        ("team-b/reporter", "5"),
        ("vendor/cache", "7"),
    ):
        contents = imagefs.files(**demo_env.DEMO_IMAGES[f"{repository}:{tag}"])
        images[f"{registry.host}/{repository}:{tag}"] = registry.push(
            repository, tag, content=f"demo {repository}", contents=contents
        )
    return images


def demo_variables(registry: services.Registry) -> dict[str, str]:
    return {
        "REGISTRY": registry.host,
        "REGISTRY_USER": REGISTRY_USER,
        "REGISTRY_PASSWORD": REGISTRY_PASSWORD,
    }


@pytest.fixture
def demo(
    sim: SimCluster, registry: services.Registry, demo_images: dict[str, str]
) -> scenario.Applied:
    loaded = scenario.load(variables=demo_variables(registry))
    return scenario.apply(sim.emulator, loaded, digests={PUBLIC: PUBLIC_DIGEST})


def pods_by_workload(sim: SimCluster) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for pod in sim.core().list_pod_for_all_namespaces().items:
        if pod.metadata.namespace == "kube-system":
            continue
        app = (pod.metadata.labels or {}).get("app", pod.metadata.name)
        out.setdefault(f"{pod.metadata.namespace}/{app}", []).append(pod)
    return out


def test_demo_pods_run_on_their_nodes_with_the_registrys_real_digests(
    sim: SimCluster,
    demo: scenario.Applied,
    demo_images: dict[str, str],
    registry: services.Registry,
) -> None:
    pods = pods_by_workload(sim)
    assert {k: len(v) for k, v in pods.items()} == {
        "team-a/web": 2,
        "payments/api": 3,
        "team-b/nightly": 1,
        "monitoring/agent": 3,
        "monitoring/cache": 1,
    }
    for key, image in (
        ("team-a/web", "team-a/web:1.0"),
        ("payments/api", "payments/api:2.3"),
        ("team-b/nightly", "team-b/reporter:5"),
    ):
        digest = demo_images[f"{registry.host}/{image}"]
        for pod in pods[key]:
            assert pod.status.phase == "Running"
            assert pod.status.container_statuses[0].image_id.endswith("@" + digest), key
    api = pods["payments/api"][0]
    assert api.status.init_container_statuses[0].state.terminated.reason == "Completed"
    assert sorted(p.spec.node_name for p in pods["monitoring/agent"]) == [
        "node-1",
        "node-2",
        "node-3",
    ]
    assert [p.spec.node_name for p in pods["monitoring/cache"]] == ["node-2"]
    assert pods["monitoring/agent"][0].status.container_statuses[0].image_id.endswith(PUBLIC_DIGEST)
    # nothing covers vendor/cache in namespace monitoring: its digest is made up, and said so
    assert demo.unresolved == [f"{registry.host}/vendor/cache:7"]


def test_demo_workloads_are_chained_by_owner_references(
    sim: SimCluster, demo: scenario.Applied
) -> None:
    apps, batch, core = sim.apps(), sim.batch(), sim.core()
    deployment = apps.read_namespaced_deployment("web", "team-a")
    (replicaset,) = apps.list_namespaced_replica_set("team-a").items
    assert replicaset.metadata.owner_references[0].uid == deployment.metadata.uid
    for pod in core.list_namespaced_pod("team-a").items:
        assert pod.metadata.owner_references[0].uid == replicaset.metadata.uid
        assert (
            pod.metadata.labels["pod-template-hash"]
            == replicaset.metadata.labels["pod-template-hash"]
        )
    cronjob = batch.read_namespaced_cron_job("nightly", "team-b")
    (job,) = batch.list_namespaced_job("team-b").items
    assert job.metadata.owner_references[0].uid == cronjob.metadata.uid
    (pod,) = core.list_namespaced_pod("team-b").items
    assert pod.metadata.owner_references[0].uid == job.metadata.uid
    assert pod.metadata.labels["job-name"] == job.metadata.name
    # the pod lists no pull secret: the service account admission copied the account's
    assert pod.spec.service_account_name == "reporter"
    assert [s.name for s in pod.spec.image_pull_secrets] == ["legacy-cfg"]
    assert core.read_namespaced_secret("legacy-cfg", "team-b").type == "kubernetes.io/dockercfg"
    # the Job controller counts the scenario's pod as the Job's one active pod
    sim.wait_for(
        lambda: batch.read_namespaced_job(job.metadata.name, "team-b").status.active == 1,
        what="active",
    )
    assert len(core.list_namespaced_pod("team-b").items) == 1
    (statefulset_pod,) = core.list_namespaced_pod("monitoring", label_selector="app=cache").items
    assert statefulset_pod.metadata.name == "cache-0"
    assert statefulset_pod.metadata.owner_references[0].kind == "StatefulSet"


def test_demo_pull_secret_holds_the_registry_credential_and_scans_with_it(
    sim: SimCluster,
    demo: scenario.Applied,
    demo_images: dict[str, str],
    registry: services.Registry,
) -> None:
    from tests.integration.test_sim_jobs import (
        SCAN_NS,
        credential_secret,
        finished,
        job_pod,
        resume,
        scan_job,
    )

    regcred = sim.core().read_namespaced_secret("regcred", "team-a")
    auths = json.loads(__import__("base64").b64decode(regcred.data[".dockerconfigjson"]))["auths"]
    assert list(auths) == [registry.host]
    digest = demo_images[f"{registry.host}/team-a/web:1.0"]
    target = f"{registry.host}/team-a/web@{digest}"
    job = sim.batch().create_namespaced_job(
        SCAN_NS, scan_job("demo-web", target, secret="demo-web")
    )
    sim.core().create_namespaced_secret(
        SCAN_NS,
        credential_secret(
            "demo-web",
            job,
            {
                "username": auths[registry.host]["username"],
                "password": auths[registry.host]["password"],
            },
        ),
    )
    resume(sim, "demo-web")
    assert finished(sim, "demo-web").status.succeeded == 1
    log = sim.core().read_namespaced_pod_log(job_pod(sim, "demo-web").metadata.name, SCAN_NS)
    # the real Trivy with the bundled DB (scanqueue/sim/data/advisories.yaml) on the demo's
    # team-a/web packages (demo_env.DEMO_IMAGES): openssl's two advisories hit both of its
    # binary packages, busybox and musl one each, zlib 1.3.1 is already past its fix
    assert trivy_fixtures.findings(json.loads(log)) == {
        ("CVE-2024-5535", "libcrypto3", "CRITICAL", "3.1.6-r0"),
        ("CVE-2024-5535", "libssl3", "CRITICAL", "3.1.6-r0"),
        ("CVE-2024-4741", "libcrypto3", "HIGH", "3.1.6-r0"),
        ("CVE-2024-4741", "libssl3", "HIGH", "3.1.6-r0"),
        ("CVE-2023-42366", "busybox", "MEDIUM", "1.36.1-r16"),
        ("CVE-2025-26519", "musl", "LOW", "1.2.4-r3"),
    }


def test_demo_node_mode_scan_runs_where_the_unresolved_image_runs(
    sim: SimCluster, demo_images: dict[str, str], registry: services.Registry
) -> None:
    from tests.integration.test_sim_jobs import SCAN_NS, finished, job_pod, node_scan_job

    # the nodes' own login to the registry (an instance role, a node-level config.json):
    # no pull secret covers vendor/cache, yet its pod runs the registry's real digest
    sim.trivy.node_auth[registry.host] = (REGISTRY_USER, REGISTRY_PASSWORD)
    loaded = scenario.load(variables=demo_variables(registry))
    applied = scenario.apply(sim.emulator, loaded, digests={PUBLIC: PUBLIC_DIGEST})
    assert applied.unresolved == []

    (cache,) = sim.core().list_namespaced_pod("monitoring", label_selector="app=cache").items
    status = cache.status.container_statuses[0]
    digest = status.image_id.rsplit("@", 1)[1]
    pinned = f"{status.image.rsplit(':', 1)[0]}@{digest}"
    assert digest == demo_images[f"{registry.host}/vendor/cache:7"]
    sim.batch().create_namespaced_job(
        SCAN_NS, node_scan_job("demo-cache", pinned, cache.spec.node_name, deadline=60)
    )
    assert finished(sim, "demo-cache").status.succeeded == 1
    log = sim.core().read_namespaced_pod_log(
        job_pod(sim, "demo-cache").metadata.name, SCAN_NS, container="trivy"
    )
    # trivy rootfs / on vendor/cache's own files (demo_env.DEMO_IMAGES), the bundled DB
    assert trivy_fixtures.findings(json.loads(log)) == {
        ("CVE-2023-42366", "busybox", "MEDIUM", "1.36.1-r16"),
        ("CVE-2025-26519", "musl", "LOW", "1.2.4-r3"),
    }


def test_missing_variable_is_named() -> None:
    with pytest.raises(scenario.ScenarioError) as caught:
        scenario.load(text="namespaces: [team-a]\nnodes: ['${NODE_NAME}']\n")
    assert "${NODE_NAME}" in str(caught.value)


def test_unknown_section_is_refused() -> None:
    with pytest.raises(scenario.ScenarioError) as caught:
        scenario.load(text="namespace: [team-a]\n")
    assert "namespace" in str(caught.value) and "known:" in str(caught.value)


def test_an_object_the_api_refuses_names_the_scenario_entry(sim: SimCluster) -> None:
    text = """
namespaces: [team-a]
workloads:
  - kind: Pod
    namespace: team-a
    name: Bad_Name
    containers: [{name: app, image: "nginx@sha256:%s"}]
""" % ("c" * 64)
    with pytest.raises(scenario.ScenarioError) as caught:
        scenario.apply(sim.emulator, scenario.load(text=text))
    assert "pod team-a/Bad_Name" in str(caught.value)
    assert "metadata.name" in str(caught.value)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[dict[str, Any], Path]]:
    kubeconfig = tmp_path / "kubeconfig"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scanqueue.cli",
            "sim",
            "serve",
            "--scenario",
            "demo",
            "--kubeconfig-out",
            str(kubeconfig),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else "no output"
        yield json.loads(line), kubeconfig
    finally:
        proc.terminate()
        proc.wait(30)


def test_sim_serve_prints_its_url_and_writes_a_kubeconfig_for_the_official_client(
    served: tuple[dict[str, Any], Path],
) -> None:
    line, kubeconfig = served
    assert line["url"].startswith("http://127.0.0.1:")
    assert line["kubeconfig"] == str(kubeconfig)
    assert line["pods"] == 10
    assert oct(kubeconfig.stat().st_mode & 0o777) == "0o600"
    api_client = config.new_client_from_config(str(kubeconfig))
    try:
        pods = client.CoreV1Api(api_client).list_pod_for_all_namespaces().items
    finally:
        api_client.close()
    assert len(pods) == 10
    for pod in pods:
        assert "@sha256:" in pod.status.container_statuses[0].image_id


def test_raw_objects_and_variables_with_defaults(sim: SimCluster) -> None:
    text = """
namespaces: [team-a]
objects:
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: settings, namespace: team-a}
    data: {mode: "${MODE:-strict}", region: "${REGION}"}
"""
    scenario.apply(sim.emulator, scenario.load(text=text, variables={"REGION": "eu"}))
    data = sim.core().read_namespaced_config_map("settings", "team-a").data
    assert data == {"mode": "strict", "region": "eu"}


def test_sim_serve_refuses_a_malformed_var(capsys: pytest.CaptureFixture[str]) -> None:
    from scanqueue import cli

    assert cli.main(["sim", "serve", "--var", "NO_EQUALS_SIGN"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


def test_a_pods_digest_resolves_with_its_next_pull_secret_when_the_first_is_wrong(
    sim: SimCluster, registry: services.Registry
) -> None:
    digest = registry.push("team/second-secret", "1", content="second secret")
    text = f"""
namespaces: [team-c]
secrets:
  - namespace: team-c
    name: wrong
    dockerconfigjson: {{registry: "{registry.host}", username: {REGISTRY_USER}, password: nope}}
  - namespace: team-c
    name: right
    dockerconfigjson:
      registry: "{registry.host}"
      username: {REGISTRY_USER}
      password: {REGISTRY_PASSWORD}
workloads:
  - kind: Pod
    namespace: team-c
    name: app
    imagePullSecrets: [wrong, right]
    containers: [{{name: app, image: "{registry.host}/team/second-secret:1"}}]
"""
    applied = scenario.apply(sim.emulator, scenario.load(text=text))
    assert applied.unresolved == []  # the kubelet tries each secret in order; so does this
    pod = sim.core().read_namespaced_pod("app", "team-c")
    assert pod.status.container_statuses[0].image_id.endswith("@" + digest)
