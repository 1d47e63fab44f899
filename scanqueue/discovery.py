"""Pods to ScanRequests: which containers run which image digest, in which workload.

The watcher sees Pods as camelCase dicts; this module turns one Pod into one
``ScanRequest`` per container (init, app and ephemeral containers alike) and
names the workload that owns it by following ownerReferences (Pod ->
ReplicaSet -> Deployment, Pod -> Job -> CronJob, StatefulSet, DaemonSet, a
bare Pod). A ScanRequest is also the payload of a scan task, so it has a
small, versioned wire form (``to_payload``/``from_payload``, a marshmallow
schema) that the worker side reads back.

It must never do I/O (reading a ReplicaSet or Job goes through a lookup
function the caller injects) and a ScanRequest must never carry a secret's
value: only the *names* of the pod's imagePullSecrets and its service account,
which the worker reads fresh at scan time.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import marshmallow
from marshmallow import fields, validate

from scanqueue import config, errors, images

PAYLOAD_VERSION = 1
# Scan Jobs carry this label (manifests.py); their pods are never inventoried or scanned.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "scanqueue"
# what the watcher lists and watches: every pod but scanqueue's own scan pods (a pod without
# the label matches too), so the API server filters them out instead of ``selected``
NOT_MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}!={MANAGED_BY_VALUE}"
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"  # set by the Deployment controller

ContainerType = Literal["init", "app", "ephemeral"]
# (kind, namespace, name) -> the object as a camelCase dict, or None when it does not exist.
Lookup = Callable[[str, str, str], Mapping[str, Any] | None]

# Which part of the pod spec and status holds each type of container.
_CONTAINER_FIELDS: tuple[tuple[ContainerType, str, str], ...] = (
    ("init", "initContainers", "initContainerStatuses"),
    ("app", "containers", "containerStatuses"),
    ("ephemeral", "ephemeralContainers", "ephemeralContainerStatuses"),
)
# Owners whose own owner names the workload a person knows (and which we read to find it).
_INTERMEDIATE_OWNERS = frozenset({"ReplicaSet", "Job"})


class InvalidPayload(errors.PermanentError):
    """A scan task payload this version cannot read; the message says what is wrong."""


class NewerPayload(InvalidPayload):
    """A payload of a later version than this worker reads: a newer watcher published it.

    Not the task's fault: a worker of the newer release can run it, so the task
    is put back on its queue, not dropped (upgrade workers before watchers).
    """


@dataclasses.dataclass(frozen=True, slots=True)
class Workload:
    """The object a person manages: a Deployment, CronJob, StatefulSet... or the bare Pod."""

    kind: str
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class ScanRequest:
    """One container of one pod as the watcher saw it; references only, never a secret value.

    ``digest`` is None while the runtime has not reported the container's
    ``imageID`` (the pod is still pulling or pending). ``scan_id`` is set when
    the request becomes a scan task.
    """

    cluster: str
    namespace: str
    pod: str
    node: str | None
    workload_kind: str
    workload_name: str
    container: str
    container_type: ContainerType
    image: str
    digest: str | None
    pull_secrets: tuple[str, ...]
    service_account: str
    scan_id: str = ""

    @property
    def workload(self) -> Workload:
        return Workload(self.workload_kind, self.workload_name)


class OwnerResolver:
    """Names the workload owning a pod, reading ReplicaSets and Jobs through ``lookup``.

    A pod of a Deployment needs no read: the Deployment controller names each
    ReplicaSet ``<deployment>-<pod-template-hash>`` and labels its pods
    ``pod-template-hash=<hash>``; when the pod's label and its ReplicaSet's
    name agree, the Deployment is the name without the suffix. (A watcher
    lists ten thousand pods in a thousand ReplicaSets in seconds, not a
    thousand round trips.) Other ReplicaSets and every Job are read, and the
    result cached per (kind, namespace, name) of that owner, so all pods of
    one owner cost one read. A lookup that raises
    ``TemporaryError`` is not cached: the pod is attributed to its direct owner
    (the ReplicaSet or Job) this time, and the next event tries again.
    Safe to share between threads (at worst two threads read the same owner).
    """

    def __init__(self, lookup: Lookup, *, max_entries: int = 50_000) -> None:
        self._lookup = lookup
        self._max_entries = max_entries
        self._cache: dict[tuple[str, str, str], Workload] = {}
        self._lock = threading.Lock()

    def workload(self, pod: Mapping[str, Any]) -> Workload:
        """Return the workload owning ``pod``; ``Workload("Pod", name)`` for a bare pod."""
        metadata = pod.get("metadata") or {}
        ref = _controller(metadata)
        if ref is None:
            return Workload("Pod", str(metadata.get("name", "")))
        kind, name = str(ref.get("kind", "")), str(ref.get("name", ""))
        if kind not in _INTERMEDIATE_OWNERS:
            return Workload(kind, name)
        deployment = _deployment_by_hash(kind, name, metadata)
        if deployment is not None:
            return deployment
        key = (kind, str(metadata.get("namespace", "")), name)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            owner = self._lookup(*key)
        except errors.TemporaryError:
            return Workload(kind, name)
        parent = _controller((owner or {}).get("metadata") or {})
        found = Workload(kind, name) if parent is None else _workload(parent)
        with self._lock:
            if len(self._cache) >= self._max_entries:
                self._cache.clear()  # rare, and refilled one read per owner
            self._cache[key] = found
        return found

    def unresolved(self, pod: Mapping[str, Any]) -> tuple[str, str, str] | None:
        """The (kind, namespace, name) that ``workload(pod)`` would read now, or None."""
        metadata = pod.get("metadata") or {}
        ref = _controller(metadata)
        if ref is None:
            return None
        kind, name = str(ref.get("kind", "")), str(ref.get("name", ""))
        if kind not in _INTERMEDIATE_OWNERS or _deployment_by_hash(kind, name, metadata):
            return None
        key = (kind, str(metadata.get("namespace", "")), name)
        return None if key in self._cache else key

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """Drop a cached owner (e.g. after a Job was adopted by a CronJob)."""
        with self._lock:
            self._cache.pop((kind, namespace, name), None)


def _controller(metadata: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The managing owner reference: the one with ``controller: true``, else the first."""
    refs: Sequence[Mapping[str, Any]] = metadata.get("ownerReferences") or ()
    for ref in refs:
        if ref.get("controller"):
            return ref
    return refs[0] if refs else None


def _deployment_by_hash(kind: str, name: str, metadata: Mapping[str, Any]) -> Workload | None:
    """The Deployment of a ReplicaSet called ``<deployment>-<hash>`` whose pod has that hash."""
    if kind != "ReplicaSet":
        return None
    suffix = (metadata.get("labels") or {}).get(POD_TEMPLATE_HASH_LABEL)
    if not suffix or not name.endswith(f"-{suffix}") or len(name) <= len(suffix) + 1:
        return None
    return Workload("Deployment", name[: -len(suffix) - 1])


def _workload(ref: Mapping[str, Any]) -> Workload:
    return Workload(str(ref.get("kind", "")), str(ref.get("name", "")))


def selected(pod: Mapping[str, Any], cluster: config.ClusterSettings) -> bool:
    """True when the watcher should look at ``pod``.

    False for scanqueue's own scan pods, for pods in an excluded namespace, and
    for pods outside the included namespaces when the cluster names some.
    """
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE:
        return False
    namespace = metadata.get("namespace", "")
    if namespace in cluster.exclude_namespaces:
        return False
    return not cluster.namespaces or namespace in cluster.namespaces


def terminal(pod: Mapping[str, Any]) -> bool:
    """True when nothing runs in ``pod`` any more (phase Succeeded or Failed)."""
    return (pod.get("status") or {}).get("phase") in TERMINAL_PHASES


def digest_of(image_id: str | None) -> str | None:
    """The digest in a container status ``imageID``; None when empty or not a digest."""
    if not image_id:
        return None
    try:
        return images.parse_image_id(image_id).digest
    except images.InvalidReference:
        return None


def requests(pod: Mapping[str, Any], *, cluster: str, owners: OwnerResolver) -> list[ScanRequest]:
    """One ScanRequest per container of ``pod`` (init, app, ephemeral), in spec order.

    A container whose status has no ``imageID`` yet gets ``digest=None``. The
    workload is resolved through ``owners`` (which may read one owner, cached).
    """
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    workload = owners.workload(pod)
    namespace = str(metadata.get("namespace", ""))
    name = str(metadata.get("name", ""))
    node = spec.get("nodeName") or None
    pull_secrets = tuple(
        str(s["name"]) for s in spec.get("imagePullSecrets") or () if s and s.get("name")
    )
    service_account = str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")
    found: list[ScanRequest] = []
    for container_type, spec_field, status_field in _CONTAINER_FIELDS:
        containers = spec.get(spec_field) or ()
        if not containers:
            continue
        image_ids = {s.get("name"): s.get("imageID") for s in status.get(status_field) or ()}
        for container in containers:
            container_name = str(container.get("name", ""))
            found.append(
                ScanRequest(
                    cluster=cluster,
                    namespace=namespace,
                    pod=name,
                    node=node,
                    workload_kind=workload.kind,
                    workload_name=workload.name,
                    container=container_name,
                    container_type=container_type,
                    image=str(container.get("image", "")),
                    digest=digest_of(image_ids.get(container_name)),
                    pull_secrets=pull_secrets,
                    service_account=service_account,
                )
            )
    return found


class _PayloadSchema(marshmallow.Schema):
    """Wire form of a scan task's request, version 1. Unknown keys are refused."""

    v = fields.Integer(required=True, validate=validate.Equal(PAYLOAD_VERSION))
    scan_id = fields.String(required=True)
    cluster = fields.String(required=True, validate=validate.Length(min=1))
    namespace = fields.String(required=True, validate=validate.Length(min=1))
    pod = fields.String(required=True, validate=validate.Length(min=1))
    node = fields.String(required=True, allow_none=True)
    workload_kind = fields.String(required=True)
    workload_name = fields.String(required=True)
    container = fields.String(required=True)
    container_type = fields.String(
        required=True, validate=validate.OneOf(["init", "app", "ephemeral"])
    )
    image = fields.String(required=True, validate=validate.Length(min=1))
    digest = fields.String(required=True, allow_none=True)
    pull_secrets = fields.List(fields.String(), required=True)
    service_account = fields.String(required=True)

    @marshmallow.post_load
    def _make(self, data: dict[str, Any], **_: Any) -> ScanRequest:
        data.pop("v")
        data["pull_secrets"] = tuple(data["pull_secrets"])
        return ScanRequest(**data)


_SCHEMA = _PayloadSchema()


def to_payload(request: ScanRequest) -> dict[str, Any]:
    """The JSON-ready wire form of ``request``: ``{"v": 1, ...}``, names and references only."""
    payload: dict[str, Any] = {"v": PAYLOAD_VERSION, **dataclasses.asdict(request)}
    payload["pull_secrets"] = list(request.pull_secrets)
    return payload


def from_payload(payload: Mapping[str, Any]) -> ScanRequest:
    """Read a task payload back; raise ``InvalidPayload`` naming the problem."""
    if not isinstance(payload, Mapping):
        raise InvalidPayload(
            f"scan request payload must be an object, got {type(payload).__name__}"
        )
    version = payload.get("v")
    if isinstance(version, int) and not isinstance(version, bool) and version > PAYLOAD_VERSION:
        raise NewerPayload(
            f"scan request payload has version {version}, newer than the {PAYLOAD_VERSION} "
            "this worker reads: upgrade the workers (then the watchers; docs/operations.md)"
        )
    if version != PAYLOAD_VERSION:
        raise InvalidPayload(
            f"scan request payload has version {version!r}; this scanqueue reads version "
            f"{PAYLOAD_VERSION}: run watchers and workers of the same release"
        )
    try:
        request: ScanRequest = _SCHEMA.load(payload)
    except marshmallow.ValidationError as e:
        raise InvalidPayload(f"scan request payload is invalid: {e.messages}") from e
    return request
