"""The one adapter to the Kubernetes API: clients per cluster, and the calls scanqueue makes.

Why it exists: every other module sees Kubernetes objects as camelCase dicts
(the wire shape; what ``manifests`` builds and ``discovery`` reads) and sees
API failures as scanqueue errors, translated once, here: 404 ``NotFound``,
409 ``Conflict``, 410 ``Gone``, 429/5xx/connection failures
``TemporaryError`` (with the server's ``Retry-After``), other refusals
``PermanentError``. Messages name the verb, the kind and ``namespace/name``.

Responses are read with ``_preload_content=False`` and decoded as JSON: no
model objects, which is much faster for large lists and keeps the shape the
rest of scanqueue expects.

What it must never do: keep global client state (``load_kube_config``), or
put a Secret's content in a message or a log line. It is the only module that
imports ``kubernetes``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.watch import watch as k8s_watch

from scanqueue import config, errors

ApiClient = kubernetes.client.ApiClient
Object = dict[str, Any]

log = logging.getLogger(__name__)

LIST_PAGE_SIZE = 500  # objects per page of a paged list
CONNECT_TIMEOUT = 10.0  # seconds to open a connection to the API server
READ_TIMEOUT = 60.0  # seconds to wait for a (non-watch) response
WATCH_READ_MARGIN = 30.0  # a watch's read timeout exceeds its timeoutSeconds by this
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set on a Job's pods by the Job controller

_T = TypeVar("_T")


class NotFound(errors.PermanentError):
    """The object does not exist (HTTP 404)."""


class Forbidden(errors.PermanentError):
    """The identity in use may not do this (HTTP 403); the message names the RBAC rule missing."""

    def __init__(self, message: str, *, verb: str = "", resource: str = "", namespace: str = ""):
        super().__init__(message)
        self.verb, self.resource, self.namespace = verb, resource, namespace


class Conflict(errors.TemporaryError):
    """The object exists already or changed meanwhile (HTTP 409); reading it again may help."""


class Gone(errors.TemporaryError):
    """The resourceVersion is too old (HTTP 410): list again, then watch from the new one."""


def api_client(cluster: config.ClusterSettings) -> ApiClient:
    """Return a new API client for ``cluster`` (kubeconfig and context, or in-cluster).

    No global state is touched, so clients for several clusters live side by
    side. Raises ``ConfigError`` naming the cluster and the kubeconfig when
    the configuration cannot be loaded.
    """
    try:
        if cluster.in_cluster:
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        else:
            loaded: ApiClient = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=cluster.kubeconfig,
                context=cluster.context or None,
                persist_config=False,
            )
            configuration = loaded.configuration
            loaded.close()  # type: ignore[no-untyped-call]
    except (kubernetes.config.ConfigException, OSError, ValueError, TypeError) as e:
        source = "the in-cluster service account" if cluster.in_cluster else cluster.kubeconfig
        context = f", context {cluster.context!r}" if cluster.context else ""
        raise errors.ConfigError(
            f"cluster {cluster.name}: cannot load {source}{context}: {e}; "
            "fix the cluster's kubeconfig/context/in_cluster setting"
        ) from e
    # The pool is built from this when the client is: retry refused connections a little,
    # but never sleep on a Retry-After here; the caller's queue waits (TemporaryError.delay).
    configuration.retries = urllib3.util.Retry(
        total=2, connect=2, read=0, status=0, redirect=0, respect_retry_after_header=False
    )
    return ApiClient(configuration)


def preload() -> None:
    """Import the API classes the farm calls now (the client imports them on first use).

    The kubernetes client loads ``CoreV1Api`` (a module of some 30,000 lines) and
    ``BatchV1Api`` lazily, on first attribute access: a worker's first scan paid
    for it. The worker calls this before its pool forks, so every pool process
    starts with them loaded. Connects nowhere.
    """
    for name in ("CoreV1Api", "BatchV1Api", "AppsV1Api"):
        getattr(kubernetes.client, name)


# Reading -----------------------------------------------------------------------------------


def read_secret(*, api: ApiClient, namespace: str, name: str) -> Object:
    """Return the Secret ``namespace/name``. Raises ``NotFound``, ``PermanentError``, ..."""
    core = kubernetes.client.CoreV1Api(api)
    return _call(
        "read",
        "Secret",
        namespace,
        name,
        lambda: core.read_namespaced_secret(name, namespace, **_raw()),
    )


def read_service_account(*, api: ApiClient, namespace: str, name: str) -> Object:
    """Return the ServiceAccount ``namespace/name``. Raises ``NotFound``, ..."""
    core = kubernetes.client.CoreV1Api(api)
    return _call(
        "read",
        "ServiceAccount",
        namespace,
        name,
        lambda: core.read_namespaced_service_account(name, namespace, **_raw()),
    )


_OWNER_READERS: dict[str, Callable[[ApiClient, str, str], Any]] = {
    "ReplicaSet": lambda api, ns, name: kubernetes.client.AppsV1Api(
        api
    ).read_namespaced_replica_set(name, ns, **_raw()),
    "Deployment": lambda api, ns, name: kubernetes.client.AppsV1Api(api).read_namespaced_deployment(
        name, ns, **_raw()
    ),
    "StatefulSet": lambda api, ns, name: kubernetes.client.AppsV1Api(
        api
    ).read_namespaced_stateful_set(name, ns, **_raw()),
    "DaemonSet": lambda api, ns, name: kubernetes.client.AppsV1Api(api).read_namespaced_daemon_set(
        name, ns, **_raw()
    ),
    "Job": lambda api, ns, name: kubernetes.client.BatchV1Api(api).read_namespaced_job(
        name, ns, **_raw()
    ),
    "CronJob": lambda api, ns, name: kubernetes.client.BatchV1Api(api).read_namespaced_cron_job(
        name, ns, **_raw()
    ),
}


def read_owner(*, api: ApiClient, kind: str, namespace: str, name: str) -> Object:
    """Return the owning workload ``kind`` ``namespace/name`` (ReplicaSet, Job, ...).

    Raises ``NotFound``, or ``PermanentError`` for a kind this adapter does not read.
    """
    reader = _OWNER_READERS.get(kind)
    if reader is None:
        raise errors.PermanentError(
            f"read {kind} {namespace}/{name}: owner kind not supported; "
            f"expected one of {', '.join(sorted(_OWNER_READERS))}"
        )
    return _call("read", kind, namespace, name, lambda: reader(api, namespace, name))


def read_job(*, api: ApiClient, namespace: str, name: str) -> Object:
    """Return the Job ``namespace/name``. Raises ``NotFound``, ..."""
    batch = kubernetes.client.BatchV1Api(api)
    return _call(
        "read", "Job", namespace, name, lambda: batch.read_namespaced_job(name, namespace, **_raw())
    )


def list_jobs(*, api: ApiClient, namespace: str, label_selector: str) -> list[Object]:
    """Return every Job in ``namespace`` matching ``label_selector`` (paged)."""
    batch = kubernetes.client.BatchV1Api(api)
    items, _ = _list_all(
        "Job",
        namespace,
        lambda **kw: batch.list_namespaced_job(namespace, label_selector=label_selector, **kw),
    )
    return items


def list_secrets(*, api: ApiClient, namespace: str, label_selector: str) -> list[Object]:
    """Return every Secret in ``namespace`` matching ``label_selector`` (paged).

    The sweep uses it to find scan Secrets left behind; callers must not log the items.
    """
    core = kubernetes.client.CoreV1Api(api)
    items, _ = _list_all(
        "Secret",
        namespace,
        lambda **kw: core.list_namespaced_secret(namespace, label_selector=label_selector, **kw),
    )
    return items


def pods_of_job(*, api: ApiClient, namespace: str, name: str) -> list[Object]:
    """Return the pods the Job ``namespace/name`` created (by its ``job-name`` label)."""
    core = kubernetes.client.CoreV1Api(api)
    selector = f"{JOB_NAME_LABEL}={name}"
    items, _ = _list_all(
        "Pod",
        namespace,
        lambda **kw: core.list_namespaced_pod(namespace, label_selector=selector, **kw),
    )
    return items


def read_pod_log(
    *,
    api: ApiClient,
    namespace: str,
    name: str,
    container: str,
    limit_bytes: int,
) -> str:
    """Return at most ``limit_bytes`` of the log of ``container`` in pod ``namespace/name``.

    Undecodable bytes are replaced (the caller parses JSON and says what is wrong).
    """
    core = kubernetes.client.CoreV1Api(api)

    def call() -> bytes:
        response: Any = core.read_namespaced_pod_log(
            name, namespace, container=container, limit_bytes=limit_bytes, **_raw()
        )
        try:
            return bytes(response.data)
        finally:
            response.release_conn()

    return _translate("read log of", "Pod", namespace, name, call).decode("utf-8", "replace")


def list_pods(
    *,
    api: ApiClient,
    namespace: str | None,
    page_size: int = LIST_PAGE_SIZE,
    label_selector: str | None = None,
) -> tuple[list[Object], str]:
    """Return every pod of ``namespace`` (``None``: all namespaces) and the list's resourceVersion.

    Pages with ``limit``/``continue``; a continue token that expired mid-list
    raises ``Gone`` (list again). Watch from the returned resourceVersion.
    ``label_selector`` narrows the list (the collect pass lists all scan pods at once).
    """
    return _gather(
        list_pod_pages(
            api=api, namespace=namespace, page_size=page_size, label_selector=label_selector
        )
    )


def list_pod_pages(
    *,
    api: ApiClient,
    namespace: str | None,
    page_size: int = LIST_PAGE_SIZE,
    label_selector: str | None = None,
) -> Iterator[tuple[list[Object], str]]:
    """Yield the pods of ``namespace`` (``None``: all) one page at a time, with the list's
    resourceVersion (the same on every page of one list: watch from it after the last).

    A caller that folds each page into its own smaller picture never holds every pod
    dict at once (10,000 pods are ~70 MB as dicts). ``Gone`` as for ``list_pods``.
    """
    core = kubernetes.client.CoreV1Api(api)
    selector: dict[str, Any] = {"label_selector": label_selector} if label_selector else {}
    if namespace is None:
        return _pages(
            "Pod", None, lambda **kw: core.list_pod_for_all_namespaces(**selector, **kw), page_size
        )
    return _pages(
        "Pod",
        namespace,
        lambda **kw: core.list_namespaced_pod(namespace, **selector, **kw),
        page_size,
    )


def watch_pods(
    *,
    api: ApiClient,
    namespace: str | None,
    resource_version: str,
    timeout_seconds: int,
) -> Iterator[tuple[str, Object]]:
    """Yield ``(type, pod)`` events for ``namespace`` (``None``: all) after ``resource_version``.

    Types are ADDED, MODIFIED, DELETED and BOOKMARK (requested; its object
    carries only ``metadata.resourceVersion``). The server ends the stream
    after ``timeout_seconds``; the iterator then simply ends. A 410 ERROR
    event (or response) raises ``Gone``: list again. Other ERROR events are
    translated like any API failure.
    """
    core = kubernetes.client.CoreV1Api(api)
    where = "all namespaces" if namespace is None else namespace
    options: dict[str, Any] = {
        "watch": True,
        "resource_version": resource_version,
        "timeout_seconds": timeout_seconds,
        "allow_watch_bookmarks": True,
        "_preload_content": False,
        "_request_timeout": (CONNECT_TIMEOUT, timeout_seconds + WATCH_READ_MARGIN),
    }

    def start() -> Any:
        if namespace is None:
            return core.list_pod_for_all_namespaces(**options)
        return core.list_namespaced_pod(namespace, **options)

    return _events("Pod", where, start)


def list_job_pages(
    *, api: ApiClient, namespace: str, label_selector: str, page_size: int = LIST_PAGE_SIZE
) -> Iterator[tuple[list[Object], str]]:
    """Yield the Jobs of ``namespace`` matching ``label_selector`` a page at a time, with the
    list's resourceVersion (watch from it after the last page). ``Gone`` as for pods."""
    batch = kubernetes.client.BatchV1Api(api)
    return _pages(
        "Job",
        namespace,
        lambda **kw: batch.list_namespaced_job(namespace, label_selector=label_selector, **kw),
        page_size,
    )


def watch_jobs(
    *,
    api: ApiClient,
    namespace: str,
    label_selector: str,
    resource_version: str,
    timeout_seconds: int,
) -> Iterator[tuple[str, Object]]:
    """Yield ``(type, job)`` events after ``resource_version``, as ``watch_pods`` does for pods.

    A 410 raises ``Gone``: list again (``list_job_pages``) and watch from there.
    """
    batch = kubernetes.client.BatchV1Api(api)
    options: dict[str, Any] = {
        "watch": True,
        "label_selector": label_selector,
        "resource_version": resource_version,
        "timeout_seconds": timeout_seconds,
        "allow_watch_bookmarks": True,
        "_preload_content": False,
        "_request_timeout": (CONNECT_TIMEOUT, timeout_seconds + WATCH_READ_MARGIN),
    }
    return _events("Job", namespace, lambda: batch.list_namespaced_job(namespace, **options))


def _events(kind_name: str, where: str, start: Callable[[], Any]) -> Iterator[tuple[str, Object]]:
    """The events of a watch response opened by ``start``; ERROR events raised, translated."""
    response = _translate("watch", kind_name, where, None, start)
    try:
        lines: Iterator[str] = k8s_watch.iter_resp_lines(response)  # type: ignore[no-untyped-call]
        while True:
            line = _translate("watch", kind_name, where, None, lambda: next(lines, None))
            if line is None:
                return
            if not line:
                continue
            try:
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
            except (ValueError, KeyError, TypeError) as e:
                raise errors.TemporaryError(
                    f"watch {kind_name} in {where}: undecodable event ({e}); watch again"
                ) from e
            if kind == "ERROR":
                status = obj if isinstance(obj, dict) else {}
                code = int(status.get("code") or 0)
                raise _error_for("watch", kind_name, where, code, status, delay=None)
            yield kind, obj
    finally:
        with contextlib.suppress(Exception):
            response.close()
            response.release_conn()


# Writing -----------------------------------------------------------------------------------


def create_job(*, api: ApiClient, body: Object) -> Object:
    """Create the Job ``body`` and return it; if it exists already, return the existing one.

    Idempotent, so a redelivered task adopts the Job it created before.
    """
    batch = kubernetes.client.BatchV1Api(api)
    namespace, name = _namespace_name(body)
    try:
        return _call(
            "create",
            "Job",
            namespace,
            name,
            lambda: batch.create_namespaced_job(namespace, body, **_raw()),  # type: ignore[arg-type]
        )
    except Conflict:
        return read_job(api=api, namespace=namespace, name=name)


def resume_job(*, api: ApiClient, namespace: str, name: str) -> Object:
    """Unsuspend the Job ``namespace/name`` (merge patch ``spec.suspend: false``); return it."""
    batch = kubernetes.client.BatchV1Api(api)
    patch = {"spec": {"suspend": False}}
    return _call(
        "resume",
        "Job",
        namespace,
        name,
        lambda: batch.patch_namespaced_job(
            name, namespace, patch, _content_type="application/merge-patch+json", **_raw()
        ),
    )


def create_secret(*, api: ApiClient, body: Object) -> Object:
    """Create the Secret ``body`` and return it; if it exists already, return the existing one.

    An existing Secret owned by another Job uid than ``body``'s (a Job of the
    same name was deleted and recreated; the old Secret awaits garbage
    collection) raises ``Conflict``: retry later. Errors never carry the
    Secret's content.
    """
    core = kubernetes.client.CoreV1Api(api)
    namespace, name = _namespace_name(body)
    try:
        return _call(
            "create",
            "Secret",
            namespace,
            name,
            lambda: core.create_namespaced_secret(namespace, body, **_raw()),  # type: ignore[arg-type]
        )
    except Conflict:
        existing = read_secret(api=api, namespace=namespace, name=name)
    wanted = {o.get("uid") for o in body.get("metadata", {}).get("ownerReferences", [])}
    have = {o.get("uid") for o in existing.get("metadata", {}).get("ownerReferences", [])}
    if wanted != have:
        raise Conflict(
            f"create Secret {namespace}/{name}: it exists with another owner "
            f"(uid {', '.join(sorted(str(u) for u in have)) or 'none'}); "
            "wait for its garbage collection, then retry"
        )
    return existing


def delete_job(*, api: ApiClient, namespace: str, name: str) -> bool:
    """Delete the Job ``namespace/name`` and (in the background) its pods and owned Secret.

    Returns False when it was already gone.
    """
    batch = kubernetes.client.BatchV1Api(api)
    try:
        _call(
            "delete",
            "Job",
            namespace,
            name,
            lambda: batch.delete_namespaced_job(
                name, namespace, propagation_policy="Background", **_raw()
            ),
        )
    except NotFound:
        return False
    return True


def delete_secret(*, api: ApiClient, namespace: str, name: str) -> bool:
    """Delete the Secret ``namespace/name``. Returns False when it was already gone."""
    core = kubernetes.client.CoreV1Api(api)
    try:
        _call(
            "delete",
            "Secret",
            namespace,
            name,
            lambda: core.delete_namespaced_secret(name, namespace, **_raw()),
        )
    except NotFound:
        return False
    return True


# Plumbing ----------------------------------------------------------------------------------


def _raw() -> dict[str, Any]:
    return {"_preload_content": False, "_request_timeout": (CONNECT_TIMEOUT, READ_TIMEOUT)}


def _namespace_name(body: Object) -> tuple[str, str]:
    metadata = body.get("metadata") or {}
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not namespace or not name:
        raise errors.PermanentError(
            f"create {body.get('kind', 'object')}: metadata.namespace and metadata.name are needed"
        )
    return str(namespace), str(name)


def _call(
    verb: str, kind: str, namespace: str | None, name: str | None, call: Callable[[], Any]
) -> Object:
    """Run ``call`` (an API method with ``_preload_content=False``); return the decoded body."""

    def run() -> Object:
        response = call()
        try:
            data = response.data
        finally:
            response.release_conn()
        decoded = json.loads(data) if data else {}
        if not isinstance(decoded, dict):
            raise ValueError("response is not a JSON object")
        return decoded

    try:
        return _translate(verb, kind, namespace, name, run)
    except ValueError as e:
        raise errors.TemporaryError(
            f"{verb} {kind} {_where(namespace, name)}: the API server's answer "
            f"is not JSON ({e}); retry"
        ) from None  # the decode error keeps the raw body (a Secret's, say): not chained


def _list_all(
    kind: str,
    namespace: str | None,
    call: Callable[..., Any],
    page_size: int = LIST_PAGE_SIZE,
) -> tuple[list[Object], str]:
    return _gather(_pages(kind, namespace, call, page_size))


def _gather(pages: Iterator[tuple[list[Object], str]]) -> tuple[list[Object], str]:
    """Every item of a paged list, and its resourceVersion."""
    items: list[Object] = []
    version = ""
    for page, page_version in pages:
        items.extend(page)
        version = page_version
    return items, version


def _pages(
    kind: str,
    namespace: str | None,
    call: Callable[..., Any],
    page_size: int = LIST_PAGE_SIZE,
) -> Iterator[tuple[list[Object], str]]:
    token: str | None = None
    while True:
        options = {**_raw(), "limit": page_size}
        if token:
            options["_continue"] = token
        page = _call("list", kind, namespace, None, lambda: call(**options))  # noqa: B023
        metadata = page.get("metadata") or {}
        yield list(page.get("items") or []), str(metadata.get("resourceVersion", ""))
        token = metadata.get("continue")
        if not token:
            return


def _translate(
    verb: str, kind: str, namespace: str | None, name: str | None, call: Callable[[], _T]
) -> _T:
    where = _where(namespace, name)
    try:
        return call()
    except ApiException as e:
        error = _api_error(verb, kind, where, e)
        if kind == "Secret":  # the response body could hold what was sent: do not chain it
            raise error from None
        raise error from e
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise errors.TemporaryError(
            f"{verb} {kind} {where}: cannot reach the API server ({type(e).__name__}: {e}); retry"
        ) from e


def _where(namespace: str | None, name: str | None) -> str:
    if name is None:
        return namespace or "all namespaces"
    return f"{namespace}/{name}" if namespace else name


def _api_error(verb: str, kind: str, where: str, e: ApiException) -> errors.ScanqueueError:
    status: Object = {}
    if e.body:
        with contextlib.suppress(ValueError, TypeError):
            decoded = json.loads(e.body)
            if isinstance(decoded, dict):
                status = decoded
    code = int(e.status or status.get("code") or 0)
    if not status:
        status = {"code": code, "reason": e.reason or "", "message": ""}
    delay = _retry_after(e.headers)
    return _error_for(verb, kind, where, code, status, delay=delay)


def _error_for(
    verb: str, kind: str, where: str, code: int, status: Object, *, delay: float | None
) -> errors.ScanqueueError:
    reason = str(status.get("reason") or "")
    # A Secret's Status could echo what was sent; name the fields only, never the message.
    if kind == "Secret":
        causes = (status.get("details") or {}).get("causes") or []
        fields = sorted({str(c.get("field")) for c in causes if c.get("field")})
        detail = f"{reason} {', '.join(fields)}".strip()
    else:
        detail = str(status.get("message") or reason)
    text = f"{verb} {kind} {where}: HTTP {code}" + (f" {detail}" if detail else "")
    if code == 404:
        return NotFound(f"{text}; it does not exist (any more)")
    if code == 409:
        return Conflict(f"{text}; read it again and retry", delay=delay)
    if code == 410:
        return Gone(f"{text}; list again and watch from the new resourceVersion", delay=delay)
    if code == 429 or code >= 500 or code == 0:
        return errors.TemporaryError(f"{text}; retry later", delay=delay)
    if code == 401:
        return errors.PermanentError(f"{text}; the cluster's credentials were refused")
    if code == 403 and "exceeded quota" in str(status.get("message") or ""):
        # a ResourceQuota of the namespace is full (deploy/24-quota-scans.yaml): it frees
        # up as scans finish, so this is not a missing permission
        return errors.TemporaryError(
            f"{text}; the namespace's ResourceQuota is full: retry when scans finish, "
            "or raise the quota together with max_inflight",
            delay=delay,
        )
    if code == 403:
        return _forbidden(verb, kind, where, text)
    return errors.PermanentError(text)


_RBAC_VERBS = {"read": "get", "read log of": "get", "resume": "patch"}


def _forbidden(verb: str, kind: str, where: str, text: str) -> Forbidden:
    """A 403 as the RBAC rule that would allow it: verb, resource, namespace."""
    rbac_verb = _RBAC_VERBS.get(verb, verb)
    resource = "pods/log" if verb == "read log of" else f"{kind.lower()}s"
    if where == "all namespaces":
        namespace, scope = "", "cluster-wide (a ClusterRole)"
    else:
        namespace = where.split("/", 1)[0]
        scope = f"in namespace {namespace}"
    return Forbidden(
        f"{text}; the identity in use may not {rbac_verb} {resource} {scope}: grant it that "
        f"(verbs: [{rbac_verb}], resources: [{resource}]) — see docs/rbac.md",
        verb=rbac_verb,
        resource=resource,
        namespace=namespace,
    )


def _retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        return None
