"""The one adapter to the Kubernetes API: clients per cluster, and the calls scanqueue makes.

Why it exists: every other module sees Kubernetes objects as camelCase dicts (the wire
shape; what ``manifests`` builds and ``discovery`` reads) and sees API failures as
scanqueue errors, translated once, in ``apierrors``. Callers write ``kube.read_secret(...)``
and ``except kube.NotFound``: the names below are the package's whole public face.

- ``client``: an API client per cluster, request options, decoding an answer;
- ``apierrors``: HTTP statuses and connection failures as scanqueue errors;
- ``objects``: read, create, resume and delete single objects; pod logs;
- ``lists``: paged lists of pods, Jobs and Secrets;
- ``watches``: watches of pods and scan Jobs.

What it must never do: keep global client state (``load_kube_config``), or put a Secret's
content in a message or a log line. It is the only package that imports ``kubernetes``.
"""

from __future__ import annotations

from scanqueue.kube.apierrors import Conflict, Forbidden, Gone, NotFound
from scanqueue.kube.client import (
    CONNECT_TIMEOUT,
    LIST_PAGE_SIZE,
    READ_TIMEOUT,
    WATCH_READ_MARGIN,
    ApiClient,
    Object,
    api_client,
)
from scanqueue.kube.lists import (
    JOB_NAME_LABEL,
    list_job_pages,
    list_jobs,
    list_pod_pages,
    list_pods,
    list_secrets,
    pods_of_job,
)
from scanqueue.kube.objects import (
    create_job,
    create_secret,
    delete_job,
    delete_secret,
    read_job,
    read_owner,
    read_pod_log,
    read_pod_log_bytes,
    read_secret,
    read_service_account,
    resume_job,
)
from scanqueue.kube.watches import watch_jobs, watch_pods

__all__ = [
    "CONNECT_TIMEOUT",
    "JOB_NAME_LABEL",
    "LIST_PAGE_SIZE",
    "READ_TIMEOUT",
    "WATCH_READ_MARGIN",
    "ApiClient",
    "Conflict",
    "Forbidden",
    "Gone",
    "NotFound",
    "Object",
    "api_client",
    "create_job",
    "create_secret",
    "delete_job",
    "delete_secret",
    "list_job_pages",
    "list_jobs",
    "list_pod_pages",
    "list_pods",
    "list_secrets",
    "pods_of_job",
    "read_job",
    "read_owner",
    "read_pod_log",
    "read_pod_log_bytes",
    "read_secret",
    "read_service_account",
    "resume_job",
    "watch_jobs",
    "watch_pods",
]
