"""Pods to ScanRequests: containers, digests, owners, the wire payload."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scanqueue import config, discovery, errors

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def pod(
    name: str = "web-7d9f-abcde",
    *,
    namespace: str = "team-a",
    owner: tuple[str, str] | None = ("ReplicaSet", "web-7d9f"),
    containers: Mapping[str, str] | None = None,
    image_ids: Mapping[str, str] | None = None,
    init: Mapping[str, str] | None = None,
    init_ids: Mapping[str, str] | None = None,
    ephemeral: Mapping[str, str] | None = None,
    ephemeral_ids: Mapping[str, str] | None = None,
    pull_secrets: tuple[str, ...] = ("regcred",),
    service_account: str | None = "builder",
    labels: Mapping[str, str] | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    containers = {"app": "registry.example.com/team/app:1"} if containers is None else containers
    image_ids = {"app": f"registry.example.com/team/app@{D1}"} if image_ids is None else image_ids
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    if owner:
        metadata["ownerReferences"] = [
            {"apiVersion": "v1", "kind": owner[0], "name": owner[1], "uid": "u", "controller": True}
        ]
    spec: dict[str, Any] = {
        "nodeName": "node-1",
        "containers": [{"name": n, "image": i} for n, i in containers.items()],
        "imagePullSecrets": [{"name": s} for s in pull_secrets],
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    status: dict[str, Any] = {
        "phase": phase,
        "containerStatuses": [{"name": n, "imageID": i} for n, i in image_ids.items()],
    }
    if init:
        spec["initContainers"] = [{"name": n, "image": i} for n, i in init.items()]
        status["initContainerStatuses"] = [
            {"name": n, "imageID": i} for n, i in (init_ids or {}).items()
        ]
    if ephemeral:
        spec["ephemeralContainers"] = [{"name": n, "image": i} for n, i in ephemeral.items()]
        status["ephemeralContainerStatuses"] = [
            {"name": n, "imageID": i} for n, i in (ephemeral_ids or {}).items()
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}


def owned(kind: str, name: str, owner: tuple[str, str] | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "team-a"}
    if owner:
        metadata["ownerReferences"] = [
            {"kind": owner[0], "name": owner[1], "uid": "x", "controller": True}
        ]
    return {"kind": kind, "metadata": metadata}


class Lookups:
    """An owner lookup over a fixed set of objects that counts its calls."""

    def __init__(self, *objects: dict[str, Any], fail: int = 0) -> None:
        self.objects = {(o["kind"], "team-a", o["metadata"]["name"]): o for o in objects}
        self.calls: list[tuple[str, str, str]] = []
        self.fail = fail

    def __call__(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.calls.append((kind, namespace, name))
        if self.fail:
            self.fail -= 1
            raise errors.TemporaryError("API answered 503")
        return self.objects.get((kind, namespace, name))


def resolver(*objects: dict[str, Any]) -> discovery.OwnerResolver:
    return discovery.OwnerResolver(Lookups(*objects))


def test_every_container_type_gets_a_request_with_its_digest() -> None:
    p = pod(
        init={"setup": "busybox:1.36"},
        init_ids={"setup": f"docker-pullable://busybox@{D2}"},
        ephemeral={"debugger": "alpine"},
        ephemeral_ids={"debugger": D3},
    )
    found = discovery.requests(p, cluster="prod", owners=resolver())
    assert [(r.container, r.container_type, r.image, r.digest) for r in found] == [
        ("setup", "init", "busybox:1.36", D2),
        ("app", "app", "registry.example.com/team/app:1", D1),
        ("debugger", "ephemeral", "alpine", D3),
    ]
    first = found[0]
    assert (first.cluster, first.namespace, first.pod, first.node) == (
        "prod",
        "team-a",
        "web-7d9f-abcde",
        "node-1",
    )
    assert first.pull_secrets == ("regcred",)
    assert first.service_account == "builder"


@pytest.mark.parametrize(
    "image_id",
    [
        f"docker-pullable://registry.example.com/team/app@{D1}",
        f"docker://{D1}",
        D1,
        f"registry.example.com/team/app@{D1}",
    ],
)
def test_digest_is_read_from_every_image_id_form(image_id: str) -> None:
    found = discovery.requests(pod(image_ids={"app": image_id}), cluster="c", owners=resolver())
    assert found[0].digest == D1


@pytest.mark.parametrize("image_id", ["", "docker://not-a-digest", "repo/without-digest"])
def test_container_without_a_usable_image_id_has_no_digest(image_id: str) -> None:
    found = discovery.requests(pod(image_ids={"app": image_id}), cluster="c", owners=resolver())
    assert found[0].digest is None


def test_pending_pod_containers_have_no_digest_yet() -> None:
    p = pod(image_ids={}, phase="Pending")
    found = discovery.requests(p, cluster="c", owners=resolver())
    assert [(r.container, r.digest) for r in found] == [("app", None)]


def test_service_account_defaults_to_default_and_no_pull_secrets_is_empty() -> None:
    found = discovery.requests(
        pod(pull_secrets=(), service_account=None), cluster="c", owners=resolver()
    )
    assert found[0].service_account == "default"
    assert found[0].pull_secrets == ()


def test_deployment_is_found_through_its_replicaset_with_one_read_for_many_pods() -> None:
    lookups = Lookups(owned("ReplicaSet", "web-7d9f", ("Deployment", "web")))
    owners = discovery.OwnerResolver(lookups)
    for i in range(50):
        assert owners.workload(pod(f"web-7d9f-{i}")) == discovery.Workload("Deployment", "web")
    assert lookups.calls == [("ReplicaSet", "team-a", "web-7d9f")]


def test_deployment_pod_with_its_template_hash_needs_no_read() -> None:
    lookups = Lookups()
    owners = discovery.OwnerResolver(lookups)
    p = pod("web-5d8f7c9b4-x2x9q", owner=("ReplicaSet", "web-5d8f7c9b4"))
    p["metadata"]["labels"]["pod-template-hash"] = "5d8f7c9b4"
    assert owners.unresolved(p) is None
    assert owners.workload(p) == discovery.Workload("Deployment", "web")
    assert lookups.calls == []


def test_replicaset_whose_name_does_not_carry_the_pods_hash_is_read() -> None:
    lookups = Lookups(owned("ReplicaSet", "web-7d9f", None))
    owners = discovery.OwnerResolver(lookups)
    p = pod()
    p["metadata"]["labels"]["pod-template-hash"] = "other"
    assert owners.unresolved(p) == ("ReplicaSet", "team-a", "web-7d9f")
    assert owners.workload(p) == discovery.Workload("ReplicaSet", "web-7d9f")
    assert owners.unresolved(p) is None  # cached now
    assert lookups.calls == [("ReplicaSet", "team-a", "web-7d9f")]


def test_cronjob_is_found_through_its_job() -> None:
    owners = resolver(owned("Job", "backup-2890", ("CronJob", "backup")))
    p = pod("backup-2890-xyz", owner=("Job", "backup-2890"))
    assert owners.workload(p) == discovery.Workload("CronJob", "backup")


def test_job_without_a_cronjob_is_its_own_workload() -> None:
    owners = resolver(owned("Job", "migrate", None))
    assert owners.workload(pod("migrate-abc", owner=("Job", "migrate"))) == discovery.Workload(
        "Job", "migrate"
    )


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet"])
def test_statefulset_and_daemonset_pods_need_no_read(kind: str) -> None:
    lookups = Lookups()
    owners = discovery.OwnerResolver(lookups)
    assert owners.workload(pod("db-0", owner=(kind, "db"))) == discovery.Workload(kind, "db")
    assert lookups.calls == []


def test_bare_pod_is_its_own_workload() -> None:
    found = discovery.requests(pod("debug", owner=None), cluster="c", owners=resolver())
    assert found[0].workload == discovery.Workload("Pod", "debug")


def test_controller_owner_wins_over_other_owner_references() -> None:
    p = pod("web-1", owner=None)
    p["metadata"]["ownerReferences"] = [
        {"kind": "ConfigMap", "name": "not-me", "uid": "1"},
        {"kind": "StatefulSet", "name": "web", "uid": "2", "controller": True},
    ]
    assert resolver().workload(p) == discovery.Workload("StatefulSet", "web")


def test_deleted_replicaset_leaves_the_replicaset_as_workload() -> None:
    assert resolver().workload(pod()) == discovery.Workload("ReplicaSet", "web-7d9f")


def test_owner_read_failing_temporarily_is_retried_on_the_next_pod() -> None:
    lookups = Lookups(owned("ReplicaSet", "web-7d9f", ("Deployment", "web")), fail=1)
    owners = discovery.OwnerResolver(lookups)
    assert owners.workload(pod()) == discovery.Workload("ReplicaSet", "web-7d9f")
    assert owners.workload(pod()) == discovery.Workload("Deployment", "web")
    assert owners.workload(pod()) == discovery.Workload("Deployment", "web")
    assert len(lookups.calls) == 2


def cluster(**kwargs: Any) -> config.ClusterSettings:
    return config.ClusterSettings(name="c", kubeconfig="k", **kwargs)


def test_scan_pods_are_not_selected() -> None:
    p = pod(labels={"app.kubernetes.io/managed-by": "scanqueue"})
    assert not discovery.selected(p, cluster())
    assert discovery.selected(pod(), cluster())


def test_excluded_and_not_included_namespaces_are_not_selected() -> None:
    assert not discovery.selected(
        pod(namespace="kube-system"), cluster(exclude_namespaces=("kube-system",))
    )
    included = cluster(namespaces=("team-a", "team-b"))
    assert discovery.selected(pod(namespace="team-b"), included)
    assert not discovery.selected(pod(namespace="team-c"), included)


def test_terminal_phases() -> None:
    assert discovery.terminal(pod(phase="Succeeded"))
    assert discovery.terminal(pod(phase="Failed"))
    assert not discovery.terminal(pod(phase="Running"))


def test_payload_is_versioned_json_and_round_trips() -> None:
    request = discovery.requests(pod(), cluster="prod", owners=resolver())[0]
    request = discovery.ScanRequest(**{**_fields(request), "scan_id": "s-1"})
    payload = discovery.to_payload(request)
    assert payload["v"] == 1
    assert json.loads(json.dumps(payload)) == payload
    assert discovery.from_payload(json.loads(json.dumps(payload))) == request


def _fields(request: discovery.ScanRequest) -> dict[str, Any]:
    return {f: getattr(request, f) for f in request.__dataclass_fields__}


def test_payload_of_another_version_is_refused_with_a_clear_reason() -> None:
    payload = discovery.to_payload(discovery.requests(pod(), cluster="c", owners=resolver())[0])
    with pytest.raises(discovery.InvalidPayload, match=r"version 0.*same release"):
        discovery.from_payload({**payload, "v": 0})


def test_payload_of_a_newer_release_is_told_apart_so_the_worker_requeues_it() -> None:
    payload = discovery.to_payload(discovery.requests(pod(), cluster="c", owners=resolver())[0])
    with pytest.raises(discovery.NewerPayload, match=r"version 2, newer.*upgrade the workers"):
        discovery.from_payload({**payload, "v": 2})
    with pytest.raises(discovery.InvalidPayload) as caught:
        discovery.from_payload({**payload, "v": "2"})
    assert not isinstance(caught.value, discovery.NewerPayload)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"password": "x"}, "password"),
        ({"container_type": "sidecar"}, "container_type"),
        ({"pod": ""}, "pod"),
    ],
)
def test_invalid_payload_names_the_field(change: dict[str, Any], problem: str) -> None:
    payload = discovery.to_payload(discovery.requests(pod(), cluster="c", owners=resolver())[0])
    with pytest.raises(discovery.InvalidPayload, match=problem):
        discovery.from_payload({**payload, **change})


def test_invalid_payload_is_permanent() -> None:
    with pytest.raises(errors.PermanentError):
        discovery.from_payload([])  # type: ignore[arg-type]


_names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20)


@given(
    namespace=_names,
    pod_name=_names,
    container=_names,
    image=_names,
    secrets=st.lists(_names, max_size=3),
    digest=st.none() | st.just(D1),
)
def test_any_request_round_trips_through_json(
    namespace: str,
    pod_name: str,
    container: str,
    image: str,
    secrets: list[str],
    digest: str | None,
) -> None:
    request = discovery.ScanRequest(
        cluster="c",
        namespace=namespace,
        pod=pod_name,
        node=None,
        workload_kind="Pod",
        workload_name=pod_name,
        container=container,
        container_type="app",
        image=image,
        digest=digest,
        pull_secrets=tuple(secrets),
        service_account="default",
        scan_id="s",
    )
    wire = json.loads(json.dumps(discovery.to_payload(request)))
    assert discovery.from_payload(wire) == request
