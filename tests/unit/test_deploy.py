"""deploy/: every manifest is valid Kubernetes 1.30, and RBAC is least privilege.

The RBAC tests expand every (Cluster)RoleBinding into the grants its subjects
get: (namespace or None for cluster-wide, API group, resource, verb). They
then state what each identity may and may not do, so a rule widened by
mistake fails here rather than in someone's cluster.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from scanqueue import config
from tests.support import ops_commands

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
FARM_NS = "scanqueue"
SCANS_NS = "scanqueue-scans"
WATCHER = ("ServiceAccount", FARM_NS, "scanqueue-watcher")
WORKER = ("ServiceAccount", FARM_NS, "scanqueue-worker")
K8S_VERSION = "1.30"


def _documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                out.append((str(path.relative_to(ROOT)), doc))
    return out


DOCS = _documents()
ALL = [d for _, d in DOCS]
APPLIED = [d for p, d in DOCS if "/optional/" not in p and "/templates/" not in p]


def _id(item: tuple[str, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def _kind(kind: str, docs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [d for d in (APPLIED if docs is None else docs) if d["kind"] == kind]


def _one(kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    return _find(ALL, kind, name, namespace)


def test_deploy_folder_has_the_manifests_the_farm_needs() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in DOCS}
    for expected in [
        ("Namespace", FARM_NS),
        ("Namespace", SCANS_NS),
        ("ServiceAccount", "scanqueue-watcher"),
        ("ServiceAccount", "scanqueue-worker"),
        ("Deployment", "scanqueue-watcher"),
        ("Deployment", "scanqueue-worker"),
        ("Deployment", "scanqueue-beat"),
        ("Deployment", "scanqueue-flower"),
        ("Job", "scanqueue-migrate"),
        ("ConfigMap", "scanqueue-config"),
        ("Secret", "scanqueue"),
        ("Deployment", "trivy-server"),
        ("Service", "trivy-server"),
    ]:
        assert expected in kinds


@pytest.mark.parametrize("item", DOCS, ids=_id)
def test_manifest_validates_strictly_against_kubernetes_1_30(
    item: tuple[str, dict[str, Any]],
) -> None:
    _, doc = item
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelled_field() -> None:
    """Guards the test above: the validator really is strict about unknown fields."""
    doc = _one("Deployment", "scanqueue-worker", FARM_NS)
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# --- RBAC -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Grant:
    namespace: str | None  # None: every namespace
    group: str
    resource: str
    verb: str
    via: str


def _find(docs: list[dict[str, Any]], kind: str, name: str, ns: str | None) -> dict[str, Any]:
    for doc in docs:
        meta = doc["metadata"]
        if doc["kind"] == kind and meta["name"] == name and meta.get("namespace") == ns:
            return doc
    raise AssertionError(f"no {kind} {ns}/{name} in deploy/")


def _subject_matches(subject: dict[str, Any], who: tuple[str, str, str]) -> bool:
    _, namespace, name = who
    if subject["kind"] == "ServiceAccount":
        return (subject.get("namespace"), subject["name"]) == (namespace, name)
    if subject["kind"] == "Group":
        return subject["name"] in (
            "system:serviceaccounts",
            f"system:serviceaccounts:{namespace}",
            "system:authenticated",
            "system:unauthenticated",
        )
    return False


def grants(who: tuple[str, str, str], docs: list[dict[str, Any]] | None = None) -> set[Grant]:
    """Everything ``who`` may do, from every (Cluster)RoleBinding in ``docs`` (default: deploy/)."""
    docs = ALL if docs is None else docs
    out: set[Grant] = set()
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(_subject_matches(s, who) for s in binding.get("subjects", [])):
            continue
        namespace = binding["metadata"].get("namespace")  # None for a ClusterRoleBinding
        ref = binding["roleRef"]
        role_ns = namespace if ref["kind"] == "Role" else None
        # a RoleBinding to a ClusterRole grants its rules in the binding's namespace only
        for rule in _find(docs, ref["kind"], ref["name"], role_ns).get("rules", []):
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule.get("verbs", []):
                        via = f"{binding['kind']} {binding['metadata']['name']}"
                        out.add(Grant(namespace, group, resource, verb, via))
    return out


def _cluster_wide_secret_grants(
    who: tuple[str, str, str], docs: list[dict[str, Any]]
) -> set[Grant]:
    return {
        g
        for g in grants(who, docs)
        if g.namespace is None and _allows(g, "secrets", {"get", "list", "watch", "create"})
    }


def _allows(grant: Grant, resource: str, verbs: set[str]) -> bool:
    base = grant.resource.split("/")[0]
    return (base == resource or grant.resource == "*") and (grant.verb in verbs | {"*"})


def _watched_namespaces() -> set[str]:
    settings = _settings()
    return {ns for cluster in settings.clusters for ns in cluster.namespaces}


def test_no_rule_uses_a_wildcard() -> None:
    for doc in _kind("Role", ALL) + _kind("ClusterRole"):
        for rule in doc.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"{doc['metadata']['name']}: {rule}"


def test_worker_role_grants_no_cluster_wide_secret_access() -> None:
    docs = ALL
    assert _cluster_wide_secret_grants(WORKER, docs) == set()
    assert {g for g in grants(WORKER) if g.namespace is None} == set(), "no ClusterRole at all"


def test_worker_reads_secrets_only_in_watched_namespaces_and_the_scan_namespace() -> None:
    secret_grants = {g for g in grants(WORKER) if g.resource == "secrets"}
    namespaces = {g.namespace for g in secret_grants}
    assert namespaces == _watched_namespaces() | {SCANS_NS}
    for grant in secret_grants:
        if grant.namespace != SCANS_NS:
            assert grant.verb == "get", grant


def test_worker_reads_service_accounts_only_in_watched_namespaces() -> None:
    sa = {g for g in grants(WORKER) if g.resource == "serviceaccounts"}
    assert {(g.namespace, g.verb) for g in sa} == {(ns, "get") for ns in _watched_namespaces()}


def test_worker_may_run_scans_in_the_scan_namespace() -> None:
    got = {(g.group, g.resource, g.verb) for g in grants(WORKER) if g.namespace == SCANS_NS}
    needed = {
        *(("batch", "jobs", v) for v in ("create", "get", "list", "patch", "delete")),
        *(("", "secrets", v) for v in ("create", "get", "list", "delete")),
        ("", "pods", "list"),
        ("", "pods/log", "get"),
    }
    assert needed <= got  # and nothing more: tests/unit/test_deploy_rbac.py
    assert not any(r in ("pods", "pods/log") and v in ("create", "delete") for _, r, v in got)


def test_only_the_scan_namespace_gets_create_on_jobs_and_secrets() -> None:
    for who in (WORKER, WATCHER):
        for grant in grants(who):
            if grant.resource in ("jobs", "secrets", "pods") and grant.verb in (
                "create",
                "update",
                "patch",
                "delete",
                "deletecollection",
            ):
                assert grant.namespace == SCANS_NS, grant


def test_watcher_cannot_read_secrets_at_all() -> None:
    assert not any(_allows(g, "secrets", {"get", "list", "watch"}) for g in grants(WATCHER))


def test_watcher_lists_and_watches_pods_and_reads_owners_only() -> None:
    """Plus list and watch on the scan Jobs, in the scan namespace only (jobwatch.py)."""
    got = {(g.namespace, g.group, g.resource, g.verb) for g in grants(WATCHER, APPLIED)}
    assert got == {
        (ns, group, resource, verb)
        for ns in _watched_namespaces()
        for group, resource, verb in [
            ("", "pods", "list"),
            ("", "pods", "watch"),
            ("apps", "replicasets", "get"),
            ("batch", "jobs", "get"),
        ]
    } | {(SCANS_NS, "batch", "jobs", "list"), (SCANS_NS, "batch", "jobs", "watch")}


def test_scan_service_account_has_no_bindings_and_no_token() -> None:
    for sa in _kind("ServiceAccount"):
        if sa["metadata"]["namespace"] == SCANS_NS:
            who = ("ServiceAccount", SCANS_NS, sa["metadata"]["name"])
            assert grants(who) == set()
            assert sa.get("automountServiceAccountToken") is False
    # and no binding at all names anything in the scan namespace
    default = ("ServiceAccount", SCANS_NS, "default")
    assert _one("ServiceAccount", "default", SCANS_NS)["automountServiceAccountToken"] is False
    assert grants(default) == set()
    for binding in _kind("RoleBinding", ALL) + _kind("ClusterRoleBinding", ALL):
        for subject in binding.get("subjects", []):
            assert subject.get("namespace") != SCANS_NS, binding["metadata"]["name"]
            assert SCANS_NS not in subject["name"], binding["metadata"]["name"]


def test_the_grant_expansion_sees_a_cluster_role_bound_to_the_worker() -> None:
    """Guards the RBAC tests: a ClusterRole with secrets bound to the worker is detected."""
    role = {
        "kind": "ClusterRole",
        "metadata": {"name": "oops"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
    }
    binding = {
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "oops"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "oops"},
        "subjects": [{"kind": "Group", "name": "system:serviceaccounts:scanqueue"}],
    }
    widened = [*(d for _, d in DOCS), role, binding]
    (grant,) = _cluster_wide_secret_grants(WORKER, widened)
    assert grant == Grant(None, "", "secrets", "list", "ClusterRoleBinding oops")


# --- workloads ------------------------------------------------------------------------------


def _pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            out.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
    return out


ALL_PODS = _pod_specs(ALL)


@pytest.mark.parametrize(("name", "pod"), ALL_PODS, ids=[n for n, _ in ALL_PODS])
def test_every_workload_runs_non_root_with_a_read_only_root_and_limits(
    name: str, pod: dict[str, Any]
) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert container.get("env", []) == [
            e for e in container.get("env", []) if "value" not in e or "://" not in e["value"]
        ], "URLs (which may carry passwords) come from the Secret"
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"])
        assert {"cpu", "memory"} <= set(resources["limits"])


@pytest.mark.parametrize(("name", "pod"), ALL_PODS, ids=[n for n, _ in ALL_PODS])
def test_only_watcher_and_worker_pods_get_an_api_token(name: str, pod: dict[str, Any]) -> None:
    if name in ("scanqueue-watcher", "scanqueue-worker"):
        assert pod["serviceAccountName"] == name
        assert pod.get("automountServiceAccountToken", True) is True
    else:
        assert pod["automountServiceAccountToken"] is False


def _farm_containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, c)
        for name, pod in _pod_specs(APPLIED)
        for c in pod["containers"]
        if name.startswith("scanqueue-")
    ]


@pytest.mark.parametrize(
    ("name", "container"), _farm_containers(), ids=[n for n, _ in _farm_containers()]
)
def test_container_command_is_a_real_scanqueue_or_celery_command(
    name: str, container: dict[str, Any]
) -> None:
    assert ops_commands.problems(container["command"]) == []
    probe = container.get("livenessProbe", {}).get("exec")
    if probe:
        assert ops_commands.problems(probe["command"]) == []


def test_secret_references_name_keys_of_the_secret_template() -> None:
    for _, pod in ALL_PODS:
        for container in pod["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    template = _one("Secret", ref["name"], FARM_NS)  # deploy/templates/
                    assert ref["key"] in template["stringData"], env


def test_secret_template_holds_no_real_value() -> None:
    template = _one("Secret", "scanqueue", FARM_NS)
    assert "data" not in template
    for key, value in template["stringData"].items():
        assert "REPLACE-ME" in value, key


def test_flower_requires_basic_auth_from_the_secret() -> None:
    """Flower reads its basic auth from the Secret's file through flowerconfig.py (--conf)."""
    flower = _one("Deployment", "scanqueue-flower", FARM_NS)
    pod = flower["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (conf,) = [a.partition("=")[2] for a in container["command"] if a.startswith("--conf=")]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    directory, _, name = conf.rpartition("/")
    assert volumes[mounts[directory]]["configMap"]["name"] == "scanqueue-config"
    flowerconfig = _one("ConfigMap", "scanqueue-config", FARM_NS)["data"][name]
    default = re.search(r'"SQ_FLOWER_BASIC_AUTH_FILE", "([^"]+)"', flowerconfig)
    assert default is not None
    auth_dir, _, auth_file = default.group(1).rpartition("/")
    secret = volumes[mounts[auth_dir]]["secret"]
    assert {"key": "flower-basic-auth", "path": auth_file} in secret["items"]
    assert secret.get("optional") is not True, "without the key the pod must not start"
    env = {e["name"] for e in container.get("env", [])}
    assert not {"FLOWER_BASIC_AUTH", "FLOWER_UNAUTHENTICATED_API"} & env


def config_map_settings() -> dict[str, Any]:
    """The parsed scanqueue.toml of the ConfigMap."""
    cm = _one("ConfigMap", "scanqueue-config", FARM_NS)
    return tomllib.loads(cm["data"]["scanqueue.toml"])


def _settings() -> config.Settings:
    """The ConfigMap's settings; its password files exist only in the pods (Secret volumes,
    tests/unit/test_deploy_secrets.py), so they are left out here."""
    data = config_map_settings()
    for section in ("database", "broker"):
        data.get(section, {}).pop("password_file", None)
    return config.from_mapping(data, environ={}, source="deploy/30-config.yaml")


def test_config_map_is_a_valid_in_cluster_configuration() -> None:
    settings = _settings()
    assert settings.clusters
    for cluster in settings.clusters:
        assert cluster.in_cluster is True
        assert cluster.scan_namespace == SCANS_NS
        assert cluster.namespaces, "an empty list means every namespace: the worker Roles won't do"


def test_every_watched_namespace_has_the_worker_pull_secret_role() -> None:
    bound = {
        b["metadata"]["namespace"]
        for b in _kind("RoleBinding")
        if b["roleRef"]["name"] == "scanqueue-worker-pull-secrets"
    }
    assert bound == _watched_namespaces()


def test_workers_consume_every_cluster_queue_and_the_control_queue() -> None:
    worker = _one("Deployment", "scanqueue-worker", FARM_NS)
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    # no --queues: the worker consumes the app's queues, built from the config it mounts
    assert not [a for a in container["command"] if a.startswith(("--queues", "-Q"))]
    from workers import app

    queues = {q.name for q in app.make_app(_settings()).conf.task_queues}
    expected = {f"scan.{c.name}" for c in _settings().clusters} | {"scanqueue.control"}
    assert queues == expected


def test_singletons_are_never_doubled_during_a_rollout() -> None:
    for name in ("scanqueue-watcher", "scanqueue-beat"):
        deployment = _one("Deployment", name, FARM_NS)
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_trivy_server_is_optional_and_not_applied_by_default() -> None:
    assert not any(d["metadata"]["name"] == "trivy-server" for d in APPLIED)
    assert (DEPLOY / "optional" / "trivy-server.yaml").exists()


@pytest.mark.parametrize(("name", "max_age"), [("scanqueue-worker", 600), ("scanqueue-beat", 120)])
def test_worker_and_beat_liveness_probes_fail_when_the_role_stopped_doing_its_work(
    name: str, max_age: int
) -> None:
    (container,) = [c for n, pod in _pod_specs(APPLIED) if n == name for c in pod["containers"]]
    probe = container["livenessProbe"]["exec"]["command"]
    # healthcheck.py --max-age: the role's heartbeat (workers/heartbeat.py), not only its process
    assert probe[:5] == ["python", ops_commands.HEALTHCHECK, "--max-age", str(max_age), "--"]
    role = probe[5:]
    assert role[:4] == container["command"][:4]  # the same role as the container runs
    for option in (o for o in role[4:] if o.startswith("--hostname=")):
        assert option in container["command"], "the probe pings another worker than it runs"
    # the probe gives the role at least its max-age, and restarts it within a few periods
    spec = container["livenessProbe"]
    assert spec["periodSeconds"] * spec["failureThreshold"] <= 3 * max_age
