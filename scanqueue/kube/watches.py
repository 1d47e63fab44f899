"""Watches of pods and scan Jobs: ``(type, object)`` events after a resourceVersion.

An ERROR event is raised as the error it stands for (410: ``Gone``, list again).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
    if namespace is None:
        where, pods = "all namespaces", client.path("api", "v1", "pods")
    else:
        where, pods = namespace, client.path("api", "v1", "namespaces", namespace, "pods")
    return _events(api=api, kind_name="Pod", where=where, resource_path=pods,
                   resource_version=resource_version, timeout_seconds=timeout_seconds,
                   label_selector=label_selector)  # fmt: skip


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
    jobs = client.path("apis", "batch", "v1", "namespaces", namespace, "jobs")
    return _events(api=api, kind_name="Job", where=namespace, resource_path=jobs,
                   resource_version=resource_version, timeout_seconds=timeout_seconds,
                   label_selector=label_selector)  # fmt: skip


def _events(
    *,
    api: client.ApiClient,
    kind_name: str,
    where: str,
    resource_path: str,
    resource_version: str,
    timeout_seconds: int,
    label_selector: str | None,
) -> Iterator[tuple[str, Object]]:
    """The events of a watch of the list at ``resource_path``; ERROR events raised, translated.

    The request is the one the client's list methods send with ``watch=True`` (bookmarks
    asked for, the server's timeout, and a read timeout past it)."""
    query = [("allowWatchBookmarks", "true"), ("resourceVersion", resource_version),
             ("timeoutSeconds", str(timeout_seconds)), ("watch", "true")]  # fmt: skip
    if label_selector:
        query.append(("labelSelector", label_selector))
    response = apierrors.translate(
        "watch",
        kind_name,
        where,
        None,
        lambda: client.request(
            api, "GET", resource_path, query=query,
            read_timeout=timeout_seconds + client.WATCH_READ_MARGIN,
        ),
    )  # fmt: skip
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
