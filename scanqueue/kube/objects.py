"""Single objects: read, create (idempotent), resume and delete Jobs and Secrets; pod logs.

Creating an object that exists already returns the existing one, so a redelivered task
adopts what it created before. What it must never do: put a Secret's content in a message
or a log line.
"""

from __future__ import annotations

from typing import Any

from scanqueue import errors
from scanqueue.kube import apierrors, client

Object = client.Object


def read_secret(*, api: client.ApiClient, namespace: str, name: str) -> Object:
    """Return the Secret ``namespace/name``. Raises ``NotFound``, ``PermanentError``, ..."""
    where = client.path("api", "v1", "namespaces", namespace, "secrets", name)
    return client.call("read", "Secret", namespace, name, lambda: client.request(api, "GET", where))


def read_service_account(*, api: client.ApiClient, namespace: str, name: str) -> Object:
    """Return the ServiceAccount ``namespace/name``. Raises ``NotFound``, ..."""
    where = client.path("api", "v1", "namespaces", namespace, "serviceaccounts", name)
    return client.call(
        "read", "ServiceAccount", namespace, name, lambda: client.request(api, "GET", where)
    )


# the owner kinds read, by the API group/version and plural of their path
_OWNERS: dict[str, tuple[str, str, str]] = {
    "ReplicaSet": ("apps", "v1", "replicasets"),
    "Deployment": ("apps", "v1", "deployments"),
    "StatefulSet": ("apps", "v1", "statefulsets"),
    "DaemonSet": ("apps", "v1", "daemonsets"),
    "Job": ("batch", "v1", "jobs"),
    "CronJob": ("batch", "v1", "cronjobs"),
}


def read_owner(*, api: client.ApiClient, kind: str, namespace: str, name: str) -> Object:
    """Return the owning workload ``kind`` ``namespace/name`` (ReplicaSet, Job, ...).

    Raises ``NotFound``, or ``PermanentError`` for a kind this adapter does not read.
    """
    found = _OWNERS.get(kind)
    if found is None:
        raise errors.PermanentError(
            f"read {kind} {namespace}/{name}: owner kind not supported; "
            f"expected one of {', '.join(sorted(_OWNERS))}"
        )
    group, version, plural = found
    where = client.path("apis", group, version, "namespaces", namespace, plural, name)
    return client.call("read", kind, namespace, name, lambda: client.request(api, "GET", where))


def read_job(*, api: client.ApiClient, namespace: str, name: str) -> Object:
    """Return the Job ``namespace/name``. Raises ``NotFound``, ..."""
    return client.call(
        "read", "Job", namespace, name, lambda: client.request(api, "GET", _job(namespace, name))
    )


def read_pod_log(
    *,
    api: client.ApiClient,
    namespace: str,
    name: str,
    container: str,
    limit_bytes: int,
) -> str:
    """Return at most ``limit_bytes`` of the log of ``container`` in pod ``namespace/name``.

    Undecodable bytes are replaced (the caller parses JSON and says what is wrong).
    """
    raw = read_pod_log_bytes(
        api=api, namespace=namespace, name=name, container=container, limit_bytes=limit_bytes
    )
    return raw.decode("utf-8", "replace")


def read_pod_log_bytes(
    *,
    api: client.ApiClient,
    namespace: str,
    name: str,
    container: str,
    limit_bytes: int,
) -> bytes:
    """``read_pod_log``'s bytes as the API server sent them, not decoded: a 1 MB report
    goes to the JSON parser as it is (decoding it first, then encoding it again for
    orjson, took as long as parsing it)."""
    where = client.path("api", "v1", "namespaces", namespace, "pods", name, "log")
    query = [("container", container), ("limitBytes", str(limit_bytes))]

    def call() -> bytes:
        response: Any = client.request(api, "GET", where, query=query)
        try:
            return bytes(response.data)
        finally:
            response.release_conn()

    return apierrors.translate("read log of", "Pod", namespace, name, call)


def create_job(*, api: client.ApiClient, body: Object) -> Object:
    """Create the Job ``body`` and return it; if it exists already, return the existing one.

    Idempotent, so a redelivered task adopts the Job it created before.
    """
    namespace, name = _namespace_name(body)
    where = client.path("apis", "batch", "v1", "namespaces", namespace, "jobs")
    try:
        return client.call(
            "create", "Job", namespace, name, lambda: client.request(api, "POST", where, body=body)
        )
    except apierrors.Conflict:
        return read_job(api=api, namespace=namespace, name=name)


def resume_job(*, api: client.ApiClient, namespace: str, name: str) -> Object:
    """Unsuspend the Job ``namespace/name`` (merge patch ``spec.suspend: false``); return it."""
    patch = {"spec": {"suspend": False}}
    return client.call(
        "resume",
        "Job",
        namespace,
        name,
        lambda: client.request(
            api,
            "PATCH",
            _job(namespace, name),
            body=patch,
            content_type="application/merge-patch+json",
        ),
    )


def create_secret(*, api: client.ApiClient, body: Object) -> Object:
    """Create the Secret ``body`` and return it; if it exists already, return the existing one.

    An existing Secret owned by another Job uid than ``body``'s (a Job of the
    same name was deleted and recreated; the old Secret awaits garbage
    collection) raises ``Conflict``: retry later. Errors never carry the
    Secret's content.
    """
    namespace, name = _namespace_name(body)
    where = client.path("api", "v1", "namespaces", namespace, "secrets")
    try:
        return client.call(
            "create",
            "Secret",
            namespace,
            name,
            lambda: client.request(api, "POST", where, body=body),
        )
    except apierrors.Conflict:
        existing = read_secret(api=api, namespace=namespace, name=name)
    wanted = {o.get("uid") for o in body.get("metadata", {}).get("ownerReferences", [])}
    have = {o.get("uid") for o in existing.get("metadata", {}).get("ownerReferences", [])}
    if wanted != have:
        raise apierrors.Conflict(
            f"create Secret {namespace}/{name}: it exists with another owner "
            f"(uid {', '.join(sorted(str(u) for u in have)) or 'none'}); "
            "wait for its garbage collection, then retry"
        )
    return existing


def delete_job(*, api: client.ApiClient, namespace: str, name: str) -> bool:
    """Delete the Job ``namespace/name`` and (in the background) its pods and owned Secret.

    Returns False when it was already gone.
    """
    query = [("propagationPolicy", "Background")]
    try:
        client.call(
            "delete",
            "Job",
            namespace,
            name,
            lambda: client.request(api, "DELETE", _job(namespace, name), query=query),
        )
    except apierrors.NotFound:
        return False
    return True


def delete_secret(*, api: client.ApiClient, namespace: str, name: str) -> bool:
    """Delete the Secret ``namespace/name``. Returns False when it was already gone."""
    where = client.path("api", "v1", "namespaces", namespace, "secrets", name)
    try:
        client.call(
            "delete", "Secret", namespace, name, lambda: client.request(api, "DELETE", where)
        )
    except apierrors.NotFound:
        return False
    return True


def _job(namespace: str, name: str) -> str:
    return client.path("apis", "batch", "v1", "namespaces", namespace, "jobs", name)


def _namespace_name(body: Object) -> tuple[str, str]:
    metadata = body.get("metadata") or {}
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not namespace or not name:
        raise errors.PermanentError(
            f"create {body.get('kind', 'object')}: metadata.namespace and metadata.name are needed"
        )
    return str(namespace), str(name)
