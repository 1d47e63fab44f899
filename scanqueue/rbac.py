"""The RBAC a cluster needs for the namespaces it watches, generated from the settings.

Why it exists: with ``namespaces`` set, the watcher and the worker get
rights in those namespaces only (a RoleBinding per namespace, see
docs/rbac.md); copying deploy/22-rbac-team-a.yaml by hand for each namespace
is where a namespace gets forgotten or a grant widened. ``documents`` builds
exactly those objects from a cluster's settings (``scanqueue rbac`` prints
them for ``kubectl apply -f -``); a test keeps deploy/22-rbac-team-a.yaml
equal to what this module generates for ``team-a``.

What it must never do: grant anything cluster-wide when ``namespaces`` is
set, or any I/O.
"""

from __future__ import annotations

from typing import Any

from scanqueue import config

FARM_NAMESPACE = "scanqueue"  # where the watcher's and the worker's service accounts live
WATCHER = "scanqueue-watcher"
WORKER = "scanqueue-worker"
PULL_SECRETS_ROLE = "scanqueue-worker-pull-secrets"

Document = dict[str, Any]


def _meta(name: str, component: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = {
        "app.kubernetes.io/name": "scanqueue",
        "app.kubernetes.io/component": component,
    }
    return meta


def _binding(
    kind: str, *, component: str, role_kind: str, role: str, account: str, namespace: str | None
) -> Document:
    """A (Cluster)RoleBinding named like its role, for one farm service account."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": _meta(role, component, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": FARM_NAMESPACE}],
    }


def _watcher_binding(kind: str, namespace: str | None) -> Document:
    return _binding(kind, component="watcher", role_kind="ClusterRole", role=WATCHER,
                    account=WATCHER, namespace=namespace)  # fmt: skip


def namespace_documents(namespace: str) -> list[Document]:
    """What one watched namespace needs: the watcher's RoleBinding to its ClusterRole (pods
    list/watch, ReplicaSet/Job get, here only) and the worker's read-only pull-Secret Role."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(PULL_SECRETS_ROLE, "worker", namespace),
        "rules": [
            {"apiGroups": [""], "resources": ["secrets", "serviceaccounts"], "verbs": ["get"]}
        ],
    }
    worker = _binding("RoleBinding", component="worker", role_kind="Role",
                      role=PULL_SECRETS_ROLE, account=WORKER, namespace=namespace)  # fmt: skip
    return [_watcher_binding("RoleBinding", namespace), role, worker]


def documents(cluster: config.ClusterSettings) -> list[Document]:
    """Every per-namespace object ``cluster`` needs, in namespace order.

    With ``namespaces`` empty (watch everything) the watcher's one
    ClusterRoleBinding (deploy/optional/watcher-cluster-wide.yaml); the worker
    then needs the pull-Secret Role in every namespace with private images,
    which no generator can know.
    """
    if not cluster.namespaces:
        return [_watcher_binding("ClusterRoleBinding", None)]
    out: list[Document] = []
    for namespace in cluster.namespaces:
        if namespace not in cluster.exclude_namespaces:  # never watched: nothing to grant
            out += namespace_documents(namespace)
    return out
