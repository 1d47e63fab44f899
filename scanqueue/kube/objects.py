"""Single objects: read, create (idempotent), resume and delete Jobs and Secrets; pod logs.

Creating an object that exists already returns the existing one, so a redelivered task
adopts what it created before. What it must never do: put a Secret's content in a message
or a log line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kubernetes

from scanqueue import errors
from scanqueue.kube import apierrors, client

Object = client.Object


def read_secret(*, api: client.ApiClient, namespace: str, name: str) -> Object:
    """Return the Secret ``namespace/name``. Raises ``NotFound``, ``PermanentError``, ..."""
    core = kubernetes.client.CoreV1Api(api)
    return client.call(
        "read",
        "Secret",
        namespace,
        name,
        lambda: core.read_namespaced_secret(name, namespace, **client.raw_options()),
    )


def read_service_account(*, api: client.ApiClient, namespace: str, name: str) -> Object:
    """Return the ServiceAccount ``namespace/name``. Raises ``NotFound``, ..."""
    core = kubernetes.client.CoreV1Api(api)
    return client.call(
        "read",
        "ServiceAccount",
        namespace,
        name,
        lambda: core.read_namespaced_service_account(name, namespace, **client.raw_options()),
    )


_OWNER_READERS: dict[str, Callable[[client.ApiClient, str, str], Any]] = {
    "ReplicaSet": lambda api, ns, name: kubernetes.client.AppsV1Api(
        api
    ).read_namespaced_replica_set(name, ns, **client.raw_options()),
    "Deployment": lambda api, ns, name: kubernetes.client.AppsV1Api(api).read_namespaced_deployment(
        name, ns, **client.raw_options()
    ),
    "StatefulSet": lambda api, ns, name: kubernetes.client.AppsV1Api(
        api
    ).read_namespaced_stateful_set(name, ns, **client.raw_options()),
    "DaemonSet": lambda api, ns, name: kubernetes.client.AppsV1Api(api).read_namespaced_daemon_set(
        name, ns, **client.raw_options()
    ),
    "Job": lambda api, ns, name: kubernetes.client.BatchV1Api(api).read_namespaced_job(
        name, ns, **client.raw_options()
    ),
    "CronJob": lambda api, ns, name: kubernetes.client.BatchV1Api(api).read_namespaced_cron_job(
        name, ns, **client.raw_options()
    ),
}


def read_owner(*, api: client.ApiClient, kind: str, namespace: str, name: str) -> Object:
    """Return the owning workload ``kind`` ``namespace/name`` (ReplicaSet, Job, ...).

    Raises ``NotFound``, or ``PermanentError`` for a kind this adapter does not read.
    """
    reader = _OWNER_READERS.get(kind)
    if reader is None:
        raise errors.PermanentError(
            f"read {kind} {namespace}/{name}: owner kind not supported; "
            f"expected one of {', '.join(sorted(_OWNER_READERS))}"
        )
    return client.call("read", kind, namespace, name, lambda: reader(api, namespace, name))


def read_job(*, api: client.ApiClient, namespace: str, name: str) -> Object:
    """Return the Job ``namespace/name``. Raises ``NotFound``, ..."""
    batch = kubernetes.client.BatchV1Api(api)
    return client.call(
        "read",
        "Job",
        namespace,
        name,
        lambda: batch.read_namespaced_job(name, namespace, **client.raw_options()),
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
    core = kubernetes.client.CoreV1Api(api)

    def call() -> bytes:
        response: Any = core.read_namespaced_pod_log(
            name, namespace, container=container, limit_bytes=limit_bytes, **client.raw_options()
        )
        try:
            return bytes(response.data)
        finally:
            response.release_conn()

    return apierrors.translate("read log of", "Pod", namespace, name, call)


def create_job(*, api: client.ApiClient, body: Object) -> Object:
    """Create the Job ``body`` and return it; if it exists already, return the existing one.

    Idempotent, so a redelivered task adopts the Job it created before.
    """
    batch = kubernetes.client.BatchV1Api(api)
    namespace, name = _namespace_name(body)
    try:
        return client.call(
            "create",
            "Job",
            namespace,
            name,
            lambda: _post(api, batch._create_namespaced_job_serialize, namespace, body),
        )
    except apierrors.Conflict:
        return read_job(api=api, namespace=namespace, name=name)


def resume_job(*, api: client.ApiClient, namespace: str, name: str) -> Object:
    """Unsuspend the Job ``namespace/name`` (merge patch ``spec.suspend: false``); return it."""
    batch = kubernetes.client.BatchV1Api(api)
    patch = {"spec": {"suspend": False}}
    return client.call(
        "resume",
        "Job",
        namespace,
        name,
        lambda: batch.patch_namespaced_job(
            name,
            namespace,
            patch,
            _content_type="application/merge-patch+json",
            **client.raw_options(),
        ),
    )


def create_secret(*, api: client.ApiClient, body: Object) -> Object:
    """Create the Secret ``body`` and return it; if it exists already, return the existing one.

    An existing Secret owned by another Job uid than ``body``'s (a Job of the
    same name was deleted and recreated; the old Secret awaits garbage
    collection) raises ``Conflict``: retry later. Errors never carry the
    Secret's content.
    """
    core = kubernetes.client.CoreV1Api(api)
    namespace, name = _namespace_name(body)
    try:
        return client.call(
            "create",
            "Secret",
            namespace,
            name,
            lambda: _post(api, core._create_namespaced_secret_serialize, namespace, body),
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
    batch = kubernetes.client.BatchV1Api(api)
    try:
        client.call(
            "delete",
            "Job",
            namespace,
            name,
            lambda: batch.delete_namespaced_job(
                name, namespace, propagation_policy="Background", **client.raw_options()
            ),
        )
    except apierrors.NotFound:
        return False
    return True


def delete_secret(*, api: client.ApiClient, namespace: str, name: str) -> bool:
    """Delete the Secret ``namespace/name``. Returns False when it was already gone."""
    core = kubernetes.client.CoreV1Api(api)
    try:
        client.call(
            "delete",
            "Secret",
            namespace,
            name,
            lambda: core.delete_namespaced_secret(name, namespace, **client.raw_options()),
        )
    except apierrors.NotFound:
        return False
    return True


def _post(
    api: client.ApiClient, serialize: Callable[..., Any], namespace: str, body: Object
) -> Any:
    """``create_namespaced_*(namespace, body)`` with ``raw_options()``, ``body`` sent as it is.

    The public method validates the dict into the client's pydantic model and dumps it back
    before sending (~0.3 ms of CPU for a scan Job, once per scan); the API server validates
    it anyway. The request is the one the public method builds (``serialize``), sent and
    answered the same way: a non-2xx answer raises ``ApiException``.
    """
    request = serialize(
        namespace=namespace, body=body, pretty=None, dry_run=None, field_manager=None,
        field_validation=None, _request_auth=None, _content_type=None, _headers=None,
        _host_index=0,
    )  # fmt: skip
    options = client.raw_options()
    return api._call_with_legacy_options(
        request,
        {},
        async_req=False,
        preload_content=options["_preload_content"],
        request_timeout=options["_request_timeout"],
        return_http_data_only=True,
    )


def _namespace_name(body: Object) -> tuple[str, str]:
    metadata = body.get("metadata") or {}
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not namespace or not name:
        raise errors.PermanentError(
            f"create {body.get('kind', 'object')}: metadata.namespace and metadata.name are needed"
        )
    return str(namespace), str(name)
