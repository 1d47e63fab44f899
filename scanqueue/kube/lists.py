"""Paged lists of pods, Jobs and Secrets (``limit``/``continue``), with the list's resourceVersion.

A continue token that expired mid-list raises ``Gone``: list again.
"""

from __future__ import annotations

from collections.abc import Iterator

from scanqueue.kube import client

Object = client.Object

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set on a Job's pods by the Job controller


def list_jobs(*, api: client.ApiClient, namespace: str, label_selector: str) -> list[Object]:
    """Return every Job in ``namespace`` matching ``label_selector`` (paged)."""
    return _gather(_pages("Job", namespace, _jobs(namespace), label_selector, api=api))[0]


def list_secrets(*, api: client.ApiClient, namespace: str, label_selector: str) -> list[Object]:
    """Return every Secret in ``namespace`` matching ``label_selector`` (paged).

    The sweep uses it to find scan Secrets left behind; callers must not log the items.
    """
    where = client.path("api", "v1", "namespaces", namespace, "secrets")
    return _gather(_pages("Secret", namespace, where, label_selector, api=api))[0]


def pods_of_job(*, api: client.ApiClient, namespace: str, name: str) -> list[Object]:
    """Return the pods the Job ``namespace/name`` created (by its ``job-name`` label)."""
    selector = f"{JOB_NAME_LABEL}={name}"
    return _gather(_pages("Pod", namespace, _pods(namespace), selector, api=api))[0]


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
    return _pages("Pod", namespace, _pods(namespace), label_selector, api=api, page_size=page_size)


def list_job_pages(
    *,
    api: client.ApiClient,
    namespace: str,
    label_selector: str,
    page_size: int = client.LIST_PAGE_SIZE,
) -> Iterator[tuple[list[Object], str]]:
    """Yield the Jobs of ``namespace`` matching ``label_selector`` a page at a time, with the
    list's resourceVersion (watch from it after the last page). ``Gone`` as for pods."""
    return _pages("Job", namespace, _jobs(namespace), label_selector, api=api, page_size=page_size)


def _pods(namespace: str | None) -> str:
    if namespace is None:
        return client.path("api", "v1", "pods")
    return client.path("api", "v1", "namespaces", namespace, "pods")


def _jobs(namespace: str) -> str:
    return client.path("apis", "batch", "v1", "namespaces", namespace, "jobs")


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
    resource_path: str,
    label_selector: str | None,
    *,
    api: client.ApiClient,
    page_size: int = client.LIST_PAGE_SIZE,
) -> Iterator[tuple[list[Object], str]]:
    """The pages of the list at ``resource_path``, ``page_size`` objects each."""
    token: str | None = None
    while True:
        query = [("limit", str(page_size))]
        if label_selector:
            query.append(("labelSelector", label_selector))
        if token:
            query.append(("continue", token))
        page = client.call(
            "list",
            kind,
            namespace,
            None,
            lambda: client.request(api, "GET", resource_path, query=query),  # noqa: B023
        )
        metadata = page.get("metadata") or {}
        yield list(page.get("items") or []), str(metadata.get("resourceVersion", ""))
        token = metadata.get("continue")
        if not token:
            return
