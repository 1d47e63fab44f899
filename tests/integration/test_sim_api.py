"""The emulator behaves like kube-apiserver, seen through the official client (and raw HTTP).

Each test drives a fresh emulator (``sim`` fixture) only through
``kubernetes.client`` or, where the client cannot express the request (unknown
fields, bookmarks on the wire), through plain HTTP.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client, watch

from scanqueue.sim import cluster, resources
from tests.support.sim_fixtures import SimCluster


def raw(
    sim: SimCluster,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(sim.url + path, data=data, method=method)
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        status = e.code
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def status_of(error: client.ApiException) -> dict[str, Any]:
    body = json.loads(error.body)
    assert body["kind"] == "Status"
    return body


def namespace(sim: SimCluster, name: str = "team-a") -> str:
    sim.core().create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def pod_body(
    name: str, labels: dict[str, str] | None = None, image: str = "nginx:1.25"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }


# ------------------------------------------------------------------ discovery


def test_discovery_lists_core_apps_and_batch_resources(sim: SimCluster) -> None:
    api_client = sim.api_client()
    assert client.VersionApi(api_client).get_code().minor == "30"
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
    groups = {g.name for g in client.ApisApi(api_client).get_api_versions().groups}
    assert {"apps", "batch"} <= groups
    core = {r.name for r in client.CoreV1Api(api_client).get_api_resources().resources}
    assert {
        "pods",
        "pods/log",
        "pods/status",
        "secrets",
        "serviceaccounts",
        "nodes",
        "events",
        "namespaces",
    } <= core
    batch = {r.name for r in client.BatchV1Api(api_client).get_api_resources().resources}
    assert {"jobs", "jobs/status", "cronjobs"} <= batch
    apps = {r.name for r in client.AppsV1Api(api_client).get_api_resources().resources}
    assert {"deployments", "replicasets", "statefulsets", "daemonsets"} <= apps


# --------------------------------------------------------------------- create


def test_create_fills_server_metadata_and_one_resource_version_counter(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    first = core.create_namespaced_pod("team-a", pod_body("a"))
    second = core.create_namespaced_secret(
        "team-a", client.V1Secret(metadata=client.V1ObjectMeta(generate_name="cred-"))
    )
    assert first.metadata.uid and second.metadata.uid and first.metadata.uid != second.metadata.uid
    assert first.metadata.namespace == "team-a"
    assert first.metadata.creation_timestamp is not None
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    assert (
        second.metadata.name.startswith("cred-") and len(second.metadata.name) == len("cred-") + 5
    )
    assert first.spec.service_account_name == "default"
    assert first.status.phase == "Pending"


def test_name_clash_is_409_already_exists(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    core.create_namespaced_pod("team-a", pod_body("a"))
    with pytest.raises(client.ApiException) as caught:
        core.create_namespaced_pod("team-a", pod_body("a"))
    assert caught.value.status == 409
    body = status_of(caught.value)
    assert body["reason"] == "AlreadyExists"
    assert body["message"] == 'pods "a" already exists'


def test_missing_object_and_missing_namespace_are_404_status(sim: SimCluster) -> None:
    core = sim.core()
    with pytest.raises(client.ApiException) as caught:
        core.read_namespaced_pod("nope", "default")
    assert caught.value.status == 404
    assert status_of(caught.value)["reason"] == "NotFound"
    assert status_of(caught.value)["message"] == 'pods "nope" not found'
    with pytest.raises(client.ApiException) as caught:
        core.create_namespaced_pod("ghost", pod_body("a"))
    assert caught.value.status == 404
    assert status_of(caught.value)["message"] == 'namespaces "ghost" not found'


def test_body_namespace_must_match_url(sim: SimCluster) -> None:
    namespace(sim)
    body = pod_body("a")
    body["metadata"]["namespace"] = "default"
    with pytest.raises(client.ApiException) as caught:
        sim.core().create_namespaced_pod("team-a", body)
    assert caught.value.status == 400


def test_pod_gets_its_service_accounts_pull_secrets(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    core.create_namespaced_service_account(
        "team-a",
        client.V1ServiceAccount(
            metadata=client.V1ObjectMeta(name="builder"),
            image_pull_secrets=[client.V1LocalObjectReference(name="regcred")],
        ),
    )
    body = pod_body("a")
    body["spec"]["serviceAccountName"] = "builder"
    pod = core.create_namespaced_pod("team-a", body)
    assert [s.name for s in pod.spec.image_pull_secrets] == ["regcred"]
    body = pod_body("b")
    body["spec"]["serviceAccountName"] = "missing"
    with pytest.raises(client.ApiException) as caught:
        core.create_namespaced_pod("team-a", body)
    assert caught.value.status == 403


def test_dry_run_create_does_not_store(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    pod = core.create_namespaced_pod("team-a", pod_body("a"), dry_run="All")
    assert pod.metadata.name == "a"
    assert core.list_namespaced_pod("team-a").items == []


def test_a_body_handed_over_is_stored_as_a_copied_one_would_be() -> None:
    # the server's request bodies (fresh from json.loads), the Job controller's pods and
    # the Events are handed over (owned=True) and stored without a deep copy; what is stored
    # must be what the copying path stores, and the copying path leaves its caller's body be
    bodies: list[tuple[str, dict[str, Any]]] = [
        (
            "jobs.batch",
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "j", "labels": {"a": "b"}, "uid": "given"},
                "spec": {
                    "suspend": True,
                    "template": {
                        "metadata": {"labels": {"a": "b"}},
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "c", "image": "x:1", "args": ["a"]}],
                        },
                    },
                },
                "status": {"active": 3},
            },
        ),
        (
            "pods",
            {
                "metadata": {"generateName": "p-", "labels": {}},
                "spec": {"containers": [{"name": "c", "image": "x:1"}]},
            },
        ),
        (
            "secrets",
            {
                "metadata": {"name": "s"},
                "stringData": {"k": "v"},
                "data": {"d": base64.b64encode(b"x").decode()},
            },
        ),
        (
            "events",
            {
                "metadata": {"generateName": "j.", "namespace": "team-a"},
                "involvedObject": {"kind": "Job", "name": "j", "namespace": "team-a"},
                "reason": "R",
                "message": "m",
                "type": "Normal",
                "count": 1,
            },
        ),
    ]
    stored: dict[bool, list[dict[str, Any]]] = {}
    for owned in (False, True):
        state = cluster.Cluster(clock=lambda: 1_700_000_000.0)
        state.create(resources.BY_KEY["namespaces"], "", {"metadata": {"name": "team-a"}})
        stored[owned] = []
        for key, body in bodies:
            given = json.loads(json.dumps(body))
            obj = state.create(resources.BY_KEY[key], "team-a", given, owned=owned)
            if not owned:
                assert given == body
            # the uid and a generated name are random: the same placeholder in both
            text = json.dumps(obj).replace(obj["metadata"]["uid"], "UID")
            stored[owned].append(json.loads(text.replace(obj["metadata"]["name"], "NAME")))
    assert stored[True] == stored[False]


# ----------------------------------------------------------------- validation


def test_unknown_field_is_refused_with_its_path(sim: SimCluster) -> None:
    namespace(sim)
    body = pod_body("a")
    body["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    code, status = raw(sim, "POST", "/api/v1/namespaces/team-a/pods", body)
    assert code == 422
    assert status["reason"] == "Invalid"
    assert status["details"]["causes"][0]["field"] == "spec.containers[0].imagePullPolicyy"


def test_wrong_type_is_400_and_missing_required_field_is_422(sim: SimCluster) -> None:
    namespace(sim)
    body = pod_body("a")
    body["spec"]["containers"][0]["ports"] = [{"containerPort": "eighty"}]
    code, status = raw(sim, "POST", "/api/v1/namespaces/team-a/pods", body)
    assert code == 400
    assert status["reason"] == "BadRequest"
    assert "spec.containers[0].ports[0].containerPort" in status["message"]
    # the client's own models refuse a missing name, so this goes as raw HTTP
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "b"},
        "spec": {"containers": [{"image": "x"}]},
    }
    code, status = raw(sim, "POST", "/api/v1/namespaces/team-a/pods", body)
    assert code == 422
    causes = status["details"]["causes"]
    assert {
        "reason": "FieldValueRequired",
        "message": "Required value",
        "field": "spec.containers[0].name",
    } in causes


def test_label_value_longer_than_63_characters_is_refused(sim: SimCluster) -> None:
    namespace(sim)
    with pytest.raises(client.ApiException) as caught:
        sim.core().create_namespaced_pod("team-a", pod_body("a", {"scanqueue.io/digest": "a" * 64}))
    assert caught.value.status == 422
    assert "metadata.labels" in status_of(caught.value)["message"]


def test_job_with_restart_policy_always_is_invalid(sim: SimCluster) -> None:
    namespace(sim)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}},
    }
    with pytest.raises(client.ApiException) as caught:
        sim.batch().create_namespaced_job("team-a", job)
    assert caught.value.status == 422
    assert "spec.template.spec.restartPolicy" in status_of(caught.value)["message"]


# ----------------------------------------------------------------------- list


def test_list_with_label_and_field_selectors(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    core.create_namespaced_pod("team-a", pod_body("web-1", {"app": "web", "tier": "front"}))
    core.create_namespaced_pod("team-a", pod_body("web-2", {"app": "web"}))
    core.create_namespaced_pod("team-a", pod_body("db-1", {"app": "db"}))
    core.create_namespaced_pod("default", pod_body("other", {"app": "web"}))

    def names(**kwargs: Any) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod("team-a", **kwargs).items]

    assert names(label_selector="app=web") == ["web-1", "web-2"]
    assert names(label_selector="app!=web") == ["db-1"]
    assert names(label_selector="app in (db, cache)") == ["db-1"]
    assert names(label_selector="app notin (db),!tier") == ["web-2"]
    assert names(label_selector="tier") == ["web-1"]
    assert names(field_selector="metadata.name=web-2") == ["web-2"]
    assert [
        p.metadata.name for p in core.list_pod_for_all_namespaces(label_selector="app=web").items
    ] == [
        "other",
        "web-1",
        "web-2",
    ]
    assert [
        p.metadata.name
        for p in core.list_pod_for_all_namespaces(field_selector="metadata.namespace=default").items
    ] == ["other"]
    with pytest.raises(client.ApiException) as caught:
        core.list_namespaced_pod("team-a", field_selector="spec.image=x")
    assert caught.value.status == 400


def test_field_selectors_on_phase_and_node(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    core.create_namespaced_pod("team-a", pod_body("a"))
    sim.wait_for(
        lambda: core.read_namespaced_pod("a", "team-a").status.phase == "Running",
        what="pod a running",
    )
    running = core.list_namespaced_pod(
        "team-a", field_selector="status.phase=Running,spec.nodeName=node-1"
    )
    assert [p.metadata.name for p in running.items] == ["a"]
    assert core.list_namespaced_pod("team-a", field_selector="status.phase!=Running").items == []


def test_list_pages_with_limit_and_continue(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    for i in range(7):
        core.create_namespaced_secret(
            "team-a", client.V1Secret(metadata=client.V1ObjectMeta(name=f"s{i}"))
        )
    seen: list[str] = []
    page = core.list_namespaced_secret("team-a", limit=3)
    assert page.metadata.remaining_item_count == 4
    seen += [s.metadata.name for s in page.items]
    while page.metadata._continue:
        page = core.list_namespaced_secret("team-a", limit=3, _continue=page.metadata._continue)
        seen += [s.metadata.name for s in page.items]
    assert seen == [f"s{i}" for i in range(7)]


def test_a_namespace_lists_what_the_cluster_wide_list_holds_for_it(sim: SimCluster) -> None:
    # a namespace's list reads an index by namespace kept beside the cluster's objects: it
    # must hold what filtering the whole cluster gives, through creates, deletes, a namespace
    # emptied and filled again, selectors and pages
    core = sim.core()
    names = [namespace(sim, f"team-{n}") for n in "abc"]

    def config_map(ns: str, name: str, tier: str) -> None:
        core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels={"tier": tier}))
        )

    for i in range(12):
        config_map(names[i % 3], f"m{11 - i:02d}", "web" if i % 2 else "db")
    for name in ("m11", "m08", "m05", "m02"):  # every one in team-a: it is empty again
        core.delete_namespaced_config_map(name, "team-a")
    core.delete_namespaced_config_map("m10", "team-b")
    config_map("team-a", "m20", "web")
    config_map("team-b", "m10", "db")  # the same name again, in its namespace

    def listed(ns: str | None, selector: str | None, limit: int | None) -> list[tuple[str, str]]:
        kwargs: dict[str, Any] = {"label_selector": selector, "limit": limit}
        seen: list[tuple[str, str]] = []
        token = None
        while True:
            if token:
                kwargs["_continue"] = token
            page = (
                core.list_config_map_for_all_namespaces(**kwargs)
                if ns is None
                else core.list_namespaced_config_map(ns, **kwargs)
            )
            seen += [(m.metadata.namespace, m.metadata.name) for m in page.items]
            token = page.metadata._continue
            if not token:
                return seen

    for selector in (None, "tier=web", "tier!=web"):
        everywhere = listed(None, selector, None)
        assert everywhere == sorted(everywhere)
        for ns in [*names, "team-none"]:
            expected = [item for item in everywhere if item[0] == ns]
            assert listed(ns, selector, None) == expected
            assert listed(ns, selector, 2) == expected
    assert listed("team-a", None, None) == [("team-a", "m20")]
    assert [n.metadata.name for n in core.list_namespace().items] == sorted(
        ["default", "kube-node-lease", "kube-public", "kube-system", *names]
    )


# --------------------------------------------------------------- update, patch


def test_replace_with_stale_resource_version_is_409_conflict(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    secret = core.create_namespaced_secret(
        "team-a", client.V1Secret(metadata=client.V1ObjectMeta(name="s"), string_data={"a": "1"})
    )
    secret.string_data = {"a": "2"}
    updated = core.replace_namespaced_secret("s", "team-a", secret)
    assert int(updated.metadata.resource_version) > int(secret.metadata.resource_version)
    secret.string_data = {"a": "3"}
    with pytest.raises(client.ApiException) as caught:
        core.replace_namespaced_secret("s", "team-a", secret)
    assert caught.value.status == 409
    assert status_of(caught.value)["reason"] == "Conflict"
    assert base64.b64decode(core.read_namespaced_secret("s", "team-a").data["a"]) == b"2"


def test_merge_strategic_and_json_patch(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    body = pod_body("a", {"app": "web"})
    body["spec"]["containers"].append({"name": "side", "image": "busybox:1"})
    core.create_namespaced_pod("team-a", body)
    merged = core.patch_namespaced_pod(
        "a",
        "team-a",
        {"metadata": {"labels": {"tier": "front", "app": None}}},
        _content_type="application/merge-patch+json",
    )
    assert merged.metadata.labels == {"tier": "front"}
    strategic = core.patch_namespaced_pod(
        "a",
        "team-a",
        {"spec": {"containers": [{"name": "side", "image": "busybox:2"}]}},
        _content_type="application/strategic-merge-patch+json",
    )
    assert [(c.name, c.image) for c in strategic.spec.containers] == [
        ("app", "nginx:1.25"),
        ("side", "busybox:2"),
    ]
    patched = core.patch_namespaced_pod(
        "a", "team-a", [{"op": "add", "path": "/metadata/annotations", "value": {"k": "v"}}]
    )
    assert patched.metadata.annotations == {"k": "v"}
    with pytest.raises(client.ApiException) as caught:
        core.patch_namespaced_pod(
            "a", "team-a", [{"op": "test", "path": "/metadata/name", "value": "b"}]
        )
    assert caught.value.status == 422


def test_dict_patch_sent_as_json_patch_is_refused(sim: SimCluster) -> None:
    """A JSON patch must be a list of operations; the client sends dicts as strategic merge."""
    core = sim.core()
    namespace(sim)
    core.create_namespaced_pod("team-a", pod_body("a"))
    code, status = raw(
        sim,
        "PATCH",
        "/api/v1/namespaces/team-a/pods/a",
        {"metadata": {"labels": {"x": "y"}}},
        content_type="application/json-patch+json",
    )
    assert code == 400
    assert status["reason"] == "BadRequest"
    labels = core.patch_namespaced_pod(
        "a", "team-a", {"metadata": {"labels": {"x": "y"}}}
    ).metadata.labels
    assert labels == {"x": "y"}


def test_status_subresource_changes_only_status(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    core.create_namespaced_pod("team-a", pod_body("a"))
    patched = core.patch_namespaced_pod_status(
        "a",
        "team-a",
        {"status": {"phase": "Failed"}, "metadata": {"labels": {"x": "y"}}},
        _content_type="application/merge-patch+json",
    )
    assert patched.status.phase == "Failed"
    assert not patched.metadata.labels
    # and the main resource ignores status
    again = core.patch_namespaced_pod(
        "a",
        "team-a",
        {"status": {"phase": "Running"}},
        _content_type="application/merge-patch+json",
    )
    assert again.status.phase == "Failed"


# --------------------------------------------------------------------- delete


def _owned_pod(name: str, owner: Any, kind: str, api_version: str) -> dict[str, Any]:
    body = pod_body(name)
    body["metadata"]["ownerReferences"] = [
        {
            "apiVersion": api_version,
            "kind": kind,
            "name": owner.metadata.name,
            "uid": owner.metadata.uid,
            "controller": True,
        }
    ]
    return body


def _replicaset(sim: SimCluster, name: str = "web") -> Any:
    return sim.apps().create_namespaced_replica_set(
        "team-a",
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}]},
                },
            },
        },
    )


def test_background_delete_removes_dependents(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    rs = _replicaset(sim)
    core.create_namespaced_pod("team-a", _owned_pod("web-1", rs, "ReplicaSet", "apps/v1"))
    sim.apps().delete_namespaced_replica_set("web", "team-a", propagation_policy="Background")
    sim.wait_for(lambda: not core.list_namespaced_pod("team-a").items, what="dependent pod deleted")


def test_orphan_delete_keeps_dependents_without_the_owner_reference(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    rs = _replicaset(sim)
    core.create_namespaced_pod("team-a", _owned_pod("web-1", rs, "ReplicaSet", "apps/v1"))
    sim.apps().delete_namespaced_replica_set("web", "team-a", propagation_policy="Orphan")
    pod = core.read_namespaced_pod("web-1", "team-a")
    assert not pod.metadata.owner_references


def test_foreground_delete_keeps_the_owner_until_dependents_are_gone(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    rs = _replicaset(sim)
    core.create_namespaced_pod("team-a", _owned_pod("web-1", rs, "ReplicaSet", "apps/v1"))
    stream = watch.Watch().stream(
        sim.apps().list_namespaced_replica_set,
        "team-a",
        resource_version=rs.metadata.resource_version,
        timeout_seconds=5,
    )
    sim.apps().delete_namespaced_replica_set("web", "team-a", propagation_policy="Foreground")
    events = []
    for event in stream:
        events.append((event["type"], event["object"].metadata.deletion_timestamp is not None))
        if event["type"] == "DELETED":
            break
    assert events[0] == ("MODIFIED", True)
    assert events[-1][0] == "DELETED"
    assert not core.list_namespaced_pod("team-a").items


def test_deleting_a_job_without_policy_orphans_its_pods_like_batch_v1(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    job = sim.batch().create_namespaced_job(
        "team-a",
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "j"},
            "spec": {
                "suspend": True,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "x:1"}],
                    }
                },
            },
        },
    )
    secret = core.create_namespaced_secret(
        "team-a",
        client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="cred",
                owner_references=[
                    client.V1OwnerReference(
                        api_version="batch/v1", kind="Job", name="j", uid=job.metadata.uid
                    )
                ],
            ),
            string_data={"password": "x"},
        ),
    )
    assert secret.metadata.owner_references[0].uid == job.metadata.uid
    sim.batch().delete_namespaced_job("j", "team-a")
    assert core.read_namespaced_secret("cred", "team-a").metadata.owner_references is None


def test_secret_owned_by_a_job_goes_with_the_job(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    job = sim.batch().create_namespaced_job(
        "team-a",
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "j"},
            "spec": {
                "suspend": True,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "x:1"}],
                    }
                },
            },
        },
    )
    core.create_namespaced_secret(
        "team-a",
        client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="cred",
                owner_references=[
                    client.V1OwnerReference(
                        api_version="batch/v1", kind="Job", name="j", uid=job.metadata.uid
                    )
                ],
            ),
            string_data={"password": "x"},
        ),
    )
    sim.batch().delete_namespaced_job("j", "team-a", propagation_policy="Foreground")
    sim.wait_for(
        lambda: not core.list_namespaced_secret("team-a").items, what="owned secret deleted"
    )
    sim.wait_for(lambda: not sim.batch().list_namespaced_job("team-a").items, what="job deleted")


def test_object_created_with_a_vanished_owner_is_collected(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    body = {
        "metadata": {
            "name": "cred",
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": "gone",
                    "uid": "00000000-0000-0000-0000-000000000000",
                }
            ],
        },
        "stringData": {"password": "x"},
    }
    core.create_namespaced_secret("team-a", body)
    sim.wait_for(
        lambda: not core.list_namespaced_secret("team-a").items, what="orphan secret collected"
    )


def test_delete_collection_by_label(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    core.create_namespaced_secret(
        "team-a", client.V1Secret(metadata=client.V1ObjectMeta(name="a", labels={"scan": "1"}))
    )
    core.create_namespaced_secret(
        "team-a", client.V1Secret(metadata=client.V1ObjectMeta(name="b", labels={"scan": "2"}))
    )
    core.delete_collection_namespaced_secret("team-a", label_selector="scan=1")
    assert [s.metadata.name for s in core.list_namespaced_secret("team-a").items] == ["b"]


def test_deleting_a_namespace_deletes_its_contents(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    core.create_namespaced_secret("team-a", client.V1Secret(metadata=client.V1ObjectMeta(name="a")))
    core.delete_namespace("team-a")
    assert (
        core.list_secret_for_all_namespaces(field_selector="metadata.namespace=team-a").items == []
    )
    with pytest.raises(client.ApiException) as caught:
        core.read_namespace("team-a")
    assert caught.value.status == 404


def test_timestamps_are_the_clock_to_the_second_whatever_came_before() -> None:
    # formatted once per second and cached: going back in time, or within one second,
    # must give what formatting each time gives
    base = 1_700_000_000
    for at in (base + 0.1, base + 0.9, base + 1.0, base + 0.5, base - 3600.25, 0.0, base + 1.5):
        expected = datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert cluster.now_text(at) == expected
        assert cluster.parse_time(expected) == math.floor(at)
    assert abs(cluster.parse_time(cluster.now_text()) - time.time()) < 2


# ---------------------------------------------------------------------- watch


def test_watch_from_a_resource_version_sees_only_later_changes_and_ends_at_timeout(
    sim: SimCluster,
) -> None:
    core = sim.core()
    namespace(sim)
    core.create_namespaced_pod("team-a", pod_body("before"))
    listed = core.list_namespaced_pod("team-a")
    core.create_namespaced_pod("team-a", pod_body("after"))
    events = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(
            core.list_namespaced_pod,
            "team-a",
            resource_version=listed.metadata.resource_version,
            timeout_seconds=1,
        )
    ]
    assert ("ADDED", "after") in events
    assert ("ADDED", "before") not in events


def test_a_watch_is_woken_by_a_change_of_its_resource_at_once(sim: SimCluster) -> None:
    # a watch waits on its resource's own condition; were it not notified, it would still
    # see the change, but only at its next poll (every 0.5 s): five in a row under 0.25 s
    # would then be luck (1 in 32)
    core = sim.core()
    namespace(sim)
    rv = core.list_namespaced_config_map("team-a").metadata.resource_version
    arrived: queue.Queue[tuple[str, float]] = queue.Queue()

    def follow() -> None:
        for event in watch.Watch().stream(
            core.list_namespaced_config_map, "team-a", resource_version=rv, timeout_seconds=10
        ):
            arrived.put((event["object"].metadata.name, time.monotonic()))

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(0.3)  # the watch is open and waiting
    for i in range(5):
        core.create_namespaced_pod("team-a", pod_body(f"other-{i}"))  # another resource
        time.sleep(0.1)
        created = time.monotonic()
        core.create_namespaced_config_map(
            "team-a", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"c{i}"))
        )
        name, at = arrived.get(timeout=5)
        assert name == f"c{i}"
        assert at - created < 0.25


def test_a_watch_with_a_selector_gets_the_changes_it_sends_at_once(sim: SimCluster) -> None:
    # a watch is woken only by changes it may send (its object matches now or matched
    # before); one that was not woken would send them only at its next poll (every 0.5 s):
    # each of fifteen under 0.25 s would then be luck
    core = sim.core()
    namespace(sim)
    namespace(sim, "team-b")
    rv = core.list_namespaced_config_map("team-a").metadata.resource_version
    arrived: queue.Queue[tuple[str, str, float]] = queue.Queue()

    def follow() -> None:
        for event in watch.Watch().stream(
            core.list_namespaced_config_map,
            "team-a",
            label_selector="tier=web",
            resource_version=rv,
            timeout_seconds=20,
        ):
            arrived.put((event["type"], event["object"].metadata.name, time.monotonic()))

    def labelled(name: str, tier: str) -> client.V1ConfigMap:
        return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels={"tier": tier}))

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(0.3)  # the watch is open and waiting
    for i in range(5):
        core.create_namespaced_config_map("team-a", labelled(f"db-{i}", "db"))  # not sent
        core.create_namespaced_config_map("team-b", labelled(f"web-{i}", "web"))  # not sent
        core.create_namespaced_config_map("team-a", labelled(f"c{i}", "db"))  # not sent
        time.sleep(0.1)
        # into the selector (ADDED), out of it (DELETED, woken by the old object), back in
        for kind, tier in (("ADDED", "web"), ("DELETED", "db"), ("ADDED", "web")):
            changed = time.monotonic()
            core.patch_namespaced_config_map(
                f"c{i}", "team-a", {"metadata": {"labels": {"tier": tier}}}
            )
            got, name, at = arrived.get(timeout=5)
            assert (got, name) == (kind, f"c{i}")
            assert at - changed < 0.25
    assert arrived.empty()


def test_watch_without_resource_version_starts_with_the_current_objects(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    core.create_namespaced_secret("team-a", client.V1Secret(metadata=client.V1ObjectMeta(name="a")))
    events = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(core.list_namespaced_secret, "team-a", timeout_seconds=1)
    ]
    assert events == [("ADDED", "a")]


def test_watch_sends_bookmarks_when_allowed(sim_factory: Any) -> None:
    sim = sim_factory(bookmark_interval=0.2)
    core = sim.core()
    events = list(
        watch.Watch().stream(
            core.list_namespaced_secret, "default", allow_watch_bookmarks=True, timeout_seconds=1
        )
    )
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks
    assert (
        int(bookmarks[-1]["raw_object"]["metadata"]["resourceVersion"])
        == sim.cluster.resource_version
    )


def test_watch_from_a_compacted_resource_version_gets_410_gone(sim_factory: Any) -> None:
    sim = sim_factory(history=3)
    core = sim.core()
    first = core.create_namespaced_secret(
        "default", client.V1Secret(metadata=client.V1ObjectMeta(name="s0"))
    )
    for i in range(1, 10):
        core.create_namespaced_secret(
            "default", client.V1Secret(metadata=client.V1ObjectMeta(name=f"s{i}"))
        )
    sim.cluster.compact(3)
    with pytest.raises(client.ApiException) as caught:
        list(
            watch.Watch().stream(
                core.list_namespaced_secret,
                "default",
                resource_version=first.metadata.resource_version,
                timeout_seconds=1,
            )
        )
    assert caught.value.status == 410
    assert "Expired" in str(caught.value.reason)


def test_watch_with_a_selector_reports_objects_leaving_it_as_deleted(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    created = core.create_namespaced_secret(
        "team-a", client.V1Secret(metadata=client.V1ObjectMeta(name="a", labels={"watched": "yes"}))
    )
    core.patch_namespaced_secret(
        "a",
        "team-a",
        {"metadata": {"labels": {"watched": "no"}}},
        _content_type="application/merge-patch+json",
    )
    events = [
        (e["type"], e["object"].metadata.labels["watched"])
        for e in watch.Watch().stream(
            core.list_namespaced_secret,
            "team-a",
            label_selector="watched=yes",
            resource_version=created.metadata.resource_version,
            timeout_seconds=1,
        )
    ]
    assert events == [("DELETED", "no")]


def test_watch_on_the_wire_is_chunked_json_lines_and_ends_cleanly(sim: SimCluster) -> None:
    request = urllib.request.Request(
        sim.url
        + "/api/v1/namespaces/default/secrets?watch=true&timeoutSeconds=1&allowWatchBookmarks=true"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        lines = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    assert lines[-1]["type"] == "BOOKMARK"
    assert lines[-1]["object"]["kind"] == "Secret"


def _handler_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def _wait_for_handlers(count: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _handler_threads() <= count:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("changing", [False, True], ids=["idle", "changing"])
def test_a_watch_whose_client_left_frees_its_thread_before_the_timeout(
    sim: SimCluster, changing: bool
) -> None:
    # a watch asks whether its client left when idle and, while changes of its resource keep
    # coming that it does not send (another label), at least every half second
    import socket
    import urllib.parse

    core = sim.core()
    namespace(sim)
    core.list_namespaced_config_map("team-a")  # the client's connection is open and idle
    before = _handler_threads()
    url = urllib.parse.urlsplit(sim.url)
    conn = socket.create_connection((url.hostname, url.port), timeout=10)
    conn.sendall(
        b"GET /api/v1/namespaces/team-a/configmaps?watch=true&labelSelector=x%3Dy"
        b"&timeoutSeconds=60 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert conn.recv(65536).startswith(b"HTTP/1.1 200")
    assert _handler_threads() == before + 1
    stop = threading.Event()

    def change() -> None:
        for i in range(1000):
            if stop.wait(0.02):
                return
            core.create_namespaced_config_map(
                "team-a", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"c{i}"))
            )

    changer = threading.Thread(target=change, daemon=True)
    if changing:
        changer.start()
        time.sleep(0.3)
    conn.close()
    try:
        assert _wait_for_handlers(before, within=2.5)
    finally:
        stop.set()
        if changing:
            changer.join()


# -------------------------------------------------------------------- secrets


def test_secret_string_data_is_merged_into_base64_data(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    secret = core.create_namespaced_secret(
        "team-a",
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="s"),
            data={"a": base64.b64encode(b"one").decode()},
            string_data={"b": "two"},
        ),
    )
    assert secret.string_data is None
    assert secret.type == "Opaque"
    assert {k: base64.b64decode(v) for k, v in secret.data.items()} == {"a": b"one", "b": b"two"}


def test_dockerconfigjson_secret_needs_valid_json_under_its_key(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    canary = "canary-password-8d1f"
    with pytest.raises(client.ApiException) as caught:
        core.create_namespaced_secret(
            "team-a",
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="a"),
                type="kubernetes.io/dockerconfigjson",
                string_data={"config": "{}"},
            ),
        )
    assert caught.value.status == 422
    assert "data[.dockerconfigjson]: Required value" in status_of(caught.value)["message"]
    with pytest.raises(client.ApiException) as caught:
        core.create_namespaced_secret(
            "team-a",
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="b"),
                type="kubernetes.io/dockerconfigjson",
                string_data={".dockerconfigjson": '{"auths": {"r": {"password": "' + canary + '"}'},
            ),
        )
    assert caught.value.status == 422
    assert canary not in caught.value.body
    good = core.create_namespaced_secret(
        "team-a",
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="c"),
            type="kubernetes.io/dockerconfigjson",
            string_data={".dockerconfigjson": '{"auths": {}}'},
        ),
    )
    assert good.type == "kubernetes.io/dockerconfigjson"


def test_immutable_secret_cannot_change_but_can_be_deleted(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    core.create_namespaced_secret(
        "team-a",
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="s"), immutable=True, string_data={"a": "1"}
        ),
    )
    with pytest.raises(client.ApiException) as caught:
        core.patch_namespaced_secret(
            "s", "team-a", {"stringData": {"a": "2"}}, _content_type="application/merge-patch+json"
        )
    assert caught.value.status == 422
    with pytest.raises(client.ApiException) as caught:
        core.patch_namespaced_secret(
            "s",
            "team-a",
            {"type": "kubernetes.io/basic-auth"},
            _content_type="application/merge-patch+json",
        )
    assert caught.value.status == 422
    core.delete_namespaced_secret("s", "team-a")
    assert core.list_namespaced_secret("team-a").items == []


# ------------------------------------------------------------ other resources


def _template(name: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}]},
    }


def test_workload_resources_round_trip_through_their_apis(sim: SimCluster) -> None:
    apps, batch = sim.apps(), sim.batch()
    namespace(sim)
    selector = {"matchLabels": {"app": "w"}}
    apps.create_namespaced_deployment(
        "team-a",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "w"},
            "spec": {"selector": selector, "template": _template("w")},
        },
    )
    apps.create_namespaced_stateful_set(
        "team-a",
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "w"},
            "spec": {"selector": selector, "serviceName": "w", "template": _template("w")},
        },
    )
    apps.create_namespaced_daemon_set(
        "team-a",
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "w"},
            "spec": {"selector": selector, "template": _template("w")},
        },
    )
    cron = batch.create_namespaced_cron_job(
        "team-a",
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "w"},
            "spec": {
                "schedule": "0 * * * *",
                "jobTemplate": {
                    "spec": {
                        "template": {
                            **_template("w"),
                            "spec": {**_template("w")["spec"], "restartPolicy": "Never"},
                        }
                    }
                },
            },
        },
    )
    assert cron.metadata.generation == 1
    assert apps.read_namespaced_deployment("w", "team-a").spec.selector.match_labels == {"app": "w"}
    assert apps.read_namespaced_stateful_set("w", "team-a").spec.service_name == "w"
    assert [d.metadata.name for d in apps.list_daemon_set_for_all_namespaces().items] == ["w"]
    assert batch.read_namespaced_cron_job("w", "team-a").spec.schedule == "0 * * * *"
    patched = apps.patch_namespaced_deployment("w", "team-a", {"spec": {"replicas": 3}})
    assert patched.metadata.generation == 2


def test_events_nodes_and_service_accounts_are_served(sim: SimCluster) -> None:
    core = sim.core()
    namespace(sim)
    core.create_namespaced_event(
        "team-a",
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "e1"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "team-a"},
            "reason": "Scanned",
            "message": "scanned by scanqueue",
            "type": "Normal",
        },
    )
    assert [
        e.reason
        for e in core.list_namespaced_event("team-a", field_selector="involvedObject.name=p").items
    ] == ["Scanned"]
    nodes = core.list_node().items
    assert [n.metadata.name for n in nodes] == ["node-1"]
    assert nodes[0].status.conditions[0].type == "Ready"
    # every namespace gets its "default" service account, as the controller does
    assert [a.metadata.name for a in core.list_namespaced_service_account("team-a").items] == [
        "default"
    ]
    assert core.read_namespace("team-a").status.phase == "Active"


def test_dry_run_delete_keeps_the_object(sim: SimCluster) -> None:
    core = sim.core()
    core.create_namespaced_secret(
        "default", client.V1Secret(metadata=client.V1ObjectMeta(name="s"))
    )
    core.delete_namespaced_secret("s", "default", dry_run="All")
    assert core.read_namespaced_secret("s", "default").metadata.name == "s"


def test_the_chosen_kubernetes_version_decides_which_fields_exist(sim_factory: Any) -> None:
    """Job.spec.managedBy appeared in Kubernetes 1.30."""
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {
            "managedBy": "example.com/other-controller",
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x:1"}]}
            },
        },
    }
    old = sim_factory(kube_version="1.29")
    code, status = raw(old, "POST", "/apis/batch/v1/namespaces/default/jobs", job)
    assert code == 422
    assert status["details"]["causes"][0]["field"] == "spec.managedBy"
    assert client.VersionApi(old.api_client()).get_code().minor == "29"
    current = sim_factory(kube_version="1.30")
    code, _ = raw(current, "POST", "/apis/batch/v1/namespaces/default/jobs", job)
    assert code == 201


def test_job_field_selector_status_successful(sim: SimCluster) -> None:
    batch = sim.batch()
    code, _ = raw(
        sim,
        "POST",
        "/apis/batch/v1/namespaces/default/jobs",
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "j"},
            "spec": {
                "suspend": True,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "x:1"}],
                    }
                },
            },
        },
    )
    assert code == 201
    assert [
        j.metadata.name
        for j in batch.list_namespaced_job("default", field_selector="status.successful!=1").items
    ] == ["j"]
    assert batch.list_namespaced_job("default", field_selector="status.successful=1").items == []


def test_an_object_with_a_finalizer_waits_for_it_before_going(sim: SimCluster) -> None:
    core = sim.core()
    core.create_namespaced_secret(
        "default",
        client.V1Secret(metadata=client.V1ObjectMeta(name="s", finalizers=["example.com/keep"])),
    )
    core.delete_namespaced_secret("s", "default")
    held = core.read_namespaced_secret("s", "default")
    assert held.metadata.deletion_timestamp is not None
    core.patch_namespaced_secret(
        "s",
        "default",
        {"metadata": {"finalizers": None}},
        _content_type="application/merge-patch+json",
    )
    with pytest.raises(client.ApiException) as caught:
        core.read_namespaced_secret("s", "default")
    assert caught.value.status == 404


def test_explicit_field_validation_warn_or_ignore_drops_unknown_fields(sim: SimCluster) -> None:
    body = pod_body("a")
    body["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    request = urllib.request.Request(
        sim.url + "/api/v1/namespaces/default/pods?fieldValidation=Warn",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        warning = response.headers["Warning"]
        assert warning == "299 - \"unknown field 'spec.containers[0].imagePullPolicyy'\""
        created = json.loads(response.read())
    assert "imagePullPolicyy" not in created["spec"]["containers"][0]
    body["metadata"]["name"] = "b"
    code, created = raw(sim, "POST", "/api/v1/namespaces/default/pods?fieldValidation=Ignore", body)
    assert code == 201
    assert "imagePullPolicyy" not in created["spec"]["containers"][0]
    code, _ = raw(sim, "POST", "/api/v1/namespaces/default/pods?fieldValidation=Sometimes", body)
    assert code == 400


@pytest.mark.slow
def test_ten_thousand_pods_list_in_pages_and_stream_in_one_watch(sim_factory: Any) -> None:
    sim = sim_factory(real_pull=False)
    for i in range(10_000):
        sim.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"p{i:05d}",
                    "namespace": "default",
                    "labels": {"app": f"a{i % 10}"},
                },
                "spec": {
                    "nodeName": "node-1",
                    "containers": [{"name": "c", "image": f"r.example.com/app{i % 50}:1"}],
                },
                "status": {"phase": "Running"},
            },
            keep_status=True,
        )
    core = sim.core()
    names: list[str] = []
    token = None
    while True:
        page = core.list_namespaced_pod(
            "default", limit=500, _continue=token, _preload_content=False
        )
        body = json.loads(page.data)
        names += [p["metadata"]["name"] for p in body["items"]]
        token = body["metadata"].get("continue")
        if not token:
            break
    assert names == [f"p{i:05d}" for i in range(10_000)]
    events = list(
        watch.Watch().stream(
            core.list_namespaced_pod, "default", timeout_seconds=2, deserialize=False
        )
    )
    assert len(events) == 10_000
    assert {e["type"] for e in events} == {"ADDED"}
    assert (
        len(
            core.list_namespaced_pod(
                "default", label_selector="app=a3", _preload_content=False
            ).data
        )
        > 0
    )


def test_a_continue_token_older_than_the_retained_window_is_410(sim_factory: Any) -> None:
    sim = sim_factory(history=2)
    core = sim.core()
    for i in range(4):
        core.create_namespaced_secret(
            "default", client.V1Secret(metadata=client.V1ObjectMeta(name=f"s{i}"))
        )
    page = core.list_namespaced_secret("default", limit=2)
    for i in range(4, 8):
        core.create_namespaced_secret(
            "default", client.V1Secret(metadata=client.V1ObjectMeta(name=f"s{i}"))
        )
    sim.cluster.compact(2)
    with pytest.raises(client.ApiException) as caught:
        core.list_namespaced_secret("default", limit=2, _continue=page.metadata._continue)
    assert caught.value.status == 410
    assert status_of(caught.value)["reason"] == "Expired"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/apis/batch/v1/namespaces/default/jobs",
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "j"},
                "spec": {"template": "x"},
            },
        ),
        (
            "/api/v1/namespaces/default/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p"},
                "spec": {"containers": "x"},
            },
        ),
        (
            "/api/v1/namespaces/default/secrets",
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": "x"},
        ),
        (
            "/api/v1/namespaces/default/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s"},
                "stringData": {"n": 1},
            },
        ),
        (
            "/api/v1/namespaces/default/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s"},
                "data": {"k": "not base64!"},
            },
        ),
    ],
)
def test_bodies_of_the_wrong_shape_are_400_bad_request(
    sim: SimCluster, path: str, body: dict[str, Any]
) -> None:
    code, status = raw(sim, "POST", path, body)
    assert code == 400
    assert status["reason"] == "BadRequest"
    assert "cannot be handled as a" in status["message"]


def _random_json(rng: Any, depth: int = 0) -> Any:
    keys = ["spec", "metadata", "containers", "name", "image", "template", "data",
            "stringData", "status", "labels", "op", "path", "value", "$patch", "finalizers",
            "ownerReferences", "env"]  # fmt: skip
    roll = rng.random()
    if depth > 3 or roll < 0.3:
        return rng.choice(["x", 1, None, True, 1.5, "", [], {}, "/spec"])
    if roll < 0.6:
        return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]


def test_random_bodies_never_make_an_internal_error(sim: SimCluster) -> None:
    import random

    rng = random.Random(20261123)
    paths = ["/api/v1/namespaces/default/pods", "/api/v1/namespaces/default/secrets",
             "/apis/batch/v1/namespaces/default/jobs"]  # fmt: skip
    patch_types = ["application/merge-patch+json", "application/strategic-merge-patch+json",
                   "application/json-patch+json"]  # fmt: skip
    raw(sim, "POST", paths[1], {"metadata": {"name": "n1"}, "stringData": {"a": "b"}})
    seen: set[int] = set()
    for i in range(400):
        body = _random_json(rng)
        if isinstance(body, dict) and rng.random() < 0.5:
            body["metadata"] = {"name": f"n{i}"}
        method = rng.choice(["POST", "PUT", "PATCH", "DELETE"])
        path = rng.choice(paths) + ("" if method == "POST" else rng.choice(["/n1", "/n1/status"]))
        code, _ = raw(
            sim,
            method,
            path,
            body,
            content_type=rng.choice(patch_types) if method == "PATCH" else "application/json",
        )
        seen.add(code)
        assert code < 500, (method, path, body)
    assert {400, 404, 422} <= seen
    assert sim.core().list_namespaced_pod("default") is not None


def _exchange(sim: SimCluster, request: bytes) -> bytes:
    """Send ``request`` as it is on a new connection; return every byte until it closes."""
    import socket
    import urllib.parse

    url = urllib.parse.urlsplit(sim.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    return received


def test_request_headers_are_read_like_the_standard_server(sim: SimCluster) -> None:
    """The emulator reads request headers itself (faster than ``http.server``): names in any
    case, ``Connection: close`` honoured, malformed and oversized headers refused as the
    standard parsing would, other HTTP versions still answered."""
    body = json.dumps({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": "headers"}}).encode()  # fmt: skip
    created = _exchange(
        sim,
        b"POST /api/v1/namespaces HTTP/1.1\r\nHost: x\r\ncontent-TYPE: application/json\r\n"
        b"CONTENT-length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body,
    )
    assert created.startswith(b"HTTP/1.1 201 "), created[:200]
    assert b'"name":"headers"' in created  # the body was read by its Content-Length
    assert b"\r\nDate: " in created
    # a keep-alive connection answers two requests on one socket
    two = _exchange(
        sim,
        b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /api/v1/namespaces/headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert two.count(b"HTTP/1.1 200 ") == 2, two[:300]
    bad = _exchange(sim, b"GET /version HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 400 "), bad[:200]
    too_long = _exchange(sim, b"GET /version HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert too_long.startswith(b"HTTP/1.1 431 "), too_long[:200]
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(101))
    too_many = _exchange(sim, b"GET /version HTTP/1.1\r\n" + many + b"\r\n")
    assert too_many.startswith(b"HTTP/1.1 431 "), too_many[:200]
    old = _exchange(sim, b"GET /version HTTP/1.0\r\nHost: x\r\n\r\n")  # the standard way
    assert old.startswith(b"HTTP/1.1 200 ") and b'"gitVersion"' in old, old[:200]
