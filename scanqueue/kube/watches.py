"""Watches of pods and scan Jobs: ``(type, object)`` events after a resourceVersion.

An ERROR event is raised as the error it stands for (410: ``Gone``, list again).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes
import orjson
from kubernetes.watch import watch as k8s_watch

from scanqueue import errors
from scanqueue.kube import apierrors, client

Object = client.Object


def watch_pods(
    *,
    api: client.ApiClient,
    namespace: str | None,
    resource_version: str,
    timeout_seconds: int,
    label_selector: str | None = None,
) -> Iterator[tuple[str, Object]]:
    """Yield ``(type, pod)`` events for ``namespace`` (``None``: all) after ``resource_version``.

    ``label_selector``: only the pods it matches (as the list the watch resumes from).

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
        "_request_timeout": (client.CONNECT_TIMEOUT, timeout_seconds + client.WATCH_READ_MARGIN),
    }
    if label_selector:
        options["label_selector"] = label_selector

    def start() -> Any:
        if namespace is None:
            return core.list_pod_for_all_namespaces(**options)
        return core.list_namespaced_pod(namespace, **options)

    return _events("Pod", where, start)


def watch_jobs(
    *,
    api: client.ApiClient,
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
        "_request_timeout": (client.CONNECT_TIMEOUT, timeout_seconds + client.WATCH_READ_MARGIN),
    }
    return _events("Job", namespace, lambda: batch.list_namespaced_job(namespace, **options))


def _events(kind_name: str, where: str, start: Callable[[], Any]) -> Iterator[tuple[str, Object]]:
    """The events of a watch response opened by ``start``; ERROR events raised, translated."""
    response = apierrors.translate("watch", kind_name, where, None, start)
    try:
        lines: Iterator[str] = k8s_watch.iter_resp_lines(response)  # type: ignore[no-untyped-call]
        while True:
            line = apierrors.translate("watch", kind_name, where, None, lambda: next(lines, None))
            if line is None:
                return
            if not line:
                continue
            try:
                event = orjson.loads(line)
                kind, obj = event["type"], event["object"]
            except (orjson.JSONDecodeError, KeyError, TypeError) as e:
                raise errors.TemporaryError(
                    f"watch {kind_name} in {where}: undecodable event ({e}); watch again"
                ) from e
            if kind == "ERROR":
                status = obj if isinstance(obj, dict) else {}
                code = int(status.get("code") or 0)
                raise apierrors.for_status("watch", kind_name, where, code, status, delay=None)
            yield kind, obj
    finally:
        with contextlib.suppress(Exception):
            response.close()
            response.release_conn()
