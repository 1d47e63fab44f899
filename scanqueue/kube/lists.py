"""Paged lists of pods, Jobs and Secrets (``limit``/``continue``), with the list's resourceVersion.

A continue token that expired mid-list raises ``Gone``: list again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import kubernetes

from scanqueue.kube import client

Object = client.Object

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set on a Job's pods by the Job controller


def list_jobs(*, api: client.ApiClient, namespace: str, label_selector: str) -> list[Object]:
    """Return every Job in ``namespace`` matching ``label_selector`` (paged)."""
    batch = kubernetes.client.BatchV1Api(api)
    items, _ = _list_all(
        "Job",
        namespace,
        lambda **kw: batch.list_namespaced_job(namespace, label_selector=label_selector, **kw),
    )
    return items


def list_secrets(*, api: client.ApiClient, namespace: str, label_selector: str) -> list[Object]:
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


def pods_of_job(*, api: client.ApiClient, namespace: str, name: str) -> list[Object]:
    """Return the pods the Job ``namespace/name`` created (by its ``job-name`` label)."""
    core = kubernetes.client.CoreV1Api(api)
    selector = f"{JOB_NAME_LABEL}={name}"
    items, _ = _list_all(
        "Pod",
        namespace,
        lambda **kw: core.list_namespaced_pod(namespace, label_selector=selector, **kw),
    )
    return items


def list_pods(
    *,
    api: client.ApiClient,
    namespace: str | None,
    page_size: int = client.LIST_PAGE_SIZE,
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
    api: client.ApiClient,
    namespace: str | None,
    page_size: int = client.LIST_PAGE_SIZE,
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


def list_job_pages(
    *,
    api: client.ApiClient,
    namespace: str,
    label_selector: str,
    page_size: int = client.LIST_PAGE_SIZE,
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


def _list_all(
    kind: str,
    namespace: str | None,
    call: Callable[..., Any],
    page_size: int = client.LIST_PAGE_SIZE,
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
    page_size: int = client.LIST_PAGE_SIZE,
) -> Iterator[tuple[list[Object], str]]:
    token: str | None = None
    while True:
        options = {**client.raw_options(), "limit": page_size}
        if token:
            options["_continue"] = token
        page = client.call("list", kind, namespace, None, lambda: call(**options))  # noqa: B023
        metadata = page.get("metadata") or {}
        yield list(page.get("items") or []), str(metadata.get("resourceVersion", ""))
        token = metadata.get("continue")
        if not token:
            return
