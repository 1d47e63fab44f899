"""The rest of the cluster: garbage collector, Job controller, TTL controller, scheduler, kubelet.

One background thread reacts to the change events of the ``Cluster`` (a
de-duplicated work queue keyed by object uid, plus a timer heap for
deadlines, TTLs and retries), so that the work per change is proportional to
the objects it touches, never to the cluster's size. Registry pulls of scan
pods run in a small thread pool and post how they exited back to the queue.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from scanqueue.sim import apierrors, kubelet, podrun, resources
from scanqueue.sim import cluster as cluster_mod
from scanqueue.sim import options as options_mod

log = logging.getLogger(__name__)
Obj = dict[str, Any]
PODS = resources.BY_KEY["pods"]
JOBS = resources.BY_KEY["jobs.batch"]
NODES = resources.BY_KEY["nodes"]
SECRETS = resources.BY_KEY["secrets"]
CONFIGMAPS = resources.BY_KEY["configmaps"]
EVENTS = resources.BY_KEY["events"]
JOB_CONTROLLER = "kubernetes.io/job-controller"
RETRY_SECONDS = 0.5  # kubelet and controllers retry a blocked pod or Job this often


def _true(conditions: list[Obj] | None, kind: str) -> Obj | None:
    return next(
        (c for c in conditions or [] if c.get("type") == kind and c.get("status") == "True"), None
    )


def _set_condition(
    status: Obj, kind: str, value: str, now: str, *, reason: str = "", message: str = ""
) -> None:
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != kind]
    condition: Obj = {
        "type": kind,
        "status": value,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    conditions.append(condition)
    status["conditions"] = conditions


def is_scan_container(container: Mapping[str, Any]) -> bool:
    command = container.get("command") or []
    return bool(command) and str(command[0]).rsplit("/", 1)[-1] == "trivy"


def image_id(image: str, digest: str) -> str:
    """containerd's form of status.containerStatuses[].imageID: "host/repo@sha256:..."."""
    return f"{kubelet.repository(image)}@{digest}"


class Controllers:
    """The Job controller, garbage collection and the kubelet of scan pods, on one queue.

    Given what they act on: the cluster's state, the recorded reports, the real-Trivy
    world, how an image's digest is resolved, and the emulator's frozen options.
    """

    def __init__(
        self,
        cluster: cluster_mod.Cluster,
        *,
        reports: kubelet.Reports,
        trivy: podrun.World,
        digest_of: Callable[[str], str],
        options: options_mod.EmulatorOptions,
    ) -> None:
        self.cluster = cluster
        self.reports = reports
        self.trivy = trivy
        self.digest_of = digest_of
        self.options = options
        self._lock = threading.Condition()
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._queued: set[tuple[Any, ...]] = set()
        self._timers: list[tuple[float, int, tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._running: set[str] = set()  # pod uids whose pull is under way
        self._node_turn = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=options.pull_workers, thread_name_prefix="sim-pull"
        )
        self._thread: threading.Thread | None = None
        self._stop = False
        self.cluster.listeners.append(self._on_event)

    # ---------------------------------------------------------------- loop

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sim-controllers", daemon=True)
        self._thread.start()
        for res, obj in self.cluster.iter_all():
            self._on_event(cluster_mod.Event(0, res.key, "ADDED", obj, None))

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def enqueue(self, *item: Any) -> None:
        with self._lock:
            if item not in self._queued:
                self._queued.add(item)
                self._queue.append(item)
                self._lock.notify()

    def later(self, delay: float, *item: Any) -> None:
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + max(delay, 0), next(self._seq), item))
            self._lock.notify()

    def idle(self) -> bool:
        with self._lock:
            return not self._queue and not self._running

    def _run(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._stop:
                        return
                    now = time.monotonic()
                    while self._timers and self._timers[0][0] <= now:
                        _, _, item = heapq.heappop(self._timers)
                        if item not in self._queued:
                            self._queued.add(item)
                            self._queue.append(item)
                    if self._queue:
                        item = self._queue.popleft()
                        self._queued.discard(item)
                        break
                    wait = self._timers[0][0] - now if self._timers else 1.0
                    self._lock.wait(min(wait, 1.0))
            try:
                self._handle(item)
            except apierrors.ApiError as e:
                log.debug("controller work %s: %s", item[0], e.message)
            except Exception:
                log.exception("controller work %s failed", item[0])

    def _handle(self, item: tuple[Any, ...]) -> None:
        handler: Callable[..., None] = getattr(self, f"_do_{item[0]}")
        handler(*item[1:])

    def _on_event(self, event: cluster_mod.Event) -> None:
        """Called under the cluster lock: only enqueue."""
        meta = event.obj.get("metadata") or {}
        uid = meta.get("uid", "")
        refs = meta.get("ownerReferences") or []
        if event.type == "DELETED":
            self.enqueue("gc", uid)
            for ref in refs:
                self.enqueue("foreground", ref.get("uid", ""))
        elif meta.get("deletionTimestamp") and "foregroundDeletion" in (
            meta.get("finalizers") or []
        ):
            self.enqueue("foreground", uid)
        elif refs and event.type == "ADDED":
            self.enqueue("owners", uid)
        if event.resource == JOBS.key and event.type != "DELETED":
            self.enqueue("job", uid)
        elif event.resource == PODS.key:
            for ref in refs:
                if ref.get("kind") == "Job" and ref.get("controller"):
                    self.enqueue("job", ref.get("uid", ""))
            if (
                event.type != "DELETED"
                and (event.obj.get("status") or {}).get("phase") == "Pending"
            ):
                self.enqueue("pod", uid)
        elif event.resource == NODES.key and event.type == "ADDED":
            self.enqueue("unscheduled")

    # ------------------------------------------------------------------ GC

    def _do_gc(self, uid: str) -> None:
        """An owner is gone: delete the dependents that have no owner left."""
        for res, dep in self.cluster.dependents(uid):
            self._delete_if_orphaned(res, dep)

    def _do_owners(self, uid: str) -> None:
        found = self.cluster.by_uid(uid)
        if found is not None:
            self._delete_if_orphaned(*found)

    def _delete_if_orphaned(self, res: resources.Resource, obj: Obj) -> None:
        if self.cluster.owners_missing(obj) and not obj["metadata"].get("deletionTimestamp"):
            meta = obj["metadata"]
            self.cluster.delete(
                res, meta.get("namespace", ""), meta["name"], propagation="Background"
            )

    def _do_foreground(self, uid: str) -> None:
        found = self.cluster.by_uid(uid)
        if found is None:
            return
        res, obj = found
        meta = obj["metadata"]
        if not meta.get("deletionTimestamp") or "foregroundDeletion" not in (
            meta.get("finalizers") or []
        ):
            return
        dependents = self.cluster.dependents(uid)
        if not dependents:
            self.cluster.finish_deletion(res, obj, "foregroundDeletion")
            return
        for dep_res, dep in dependents:
            if not dep["metadata"].get("deletionTimestamp"):
                dmeta = dep["metadata"]
                self.cluster.delete(
                    dep_res, dmeta.get("namespace", ""), dmeta["name"], propagation="Foreground"
                )

    # ------------------------------------------------------------------ Jobs

    def _now(self) -> float:
        return self.cluster.clock()

    def _do_job(self, uid: str) -> None:
        found = self.cluster.by_uid(uid)
        if found is None or found[0] is not JOBS:
            return
        job = found[1]
        meta, spec = job["metadata"], job.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return
        if spec.get("managedBy", JOB_CONTROLLER) != JOB_CONTROLLER:
            return  # another controller (Kueue's MultiKueue...) owns this Job
        status: Obj = cluster_mod.clone(job.get("status") or {})
        now = self._now()
        stamp = cluster_mod.now_text(now)
        conditions = status.get("conditions")
        finished = _true(conditions, "Complete") or _true(conditions, "Failed")
        if finished:
            self._schedule_ttl(job, finished)
            return
        pods = self._owned_pods(uid)
        phase = {p["metadata"]["uid"]: (p.get("status") or {}).get("phase") for p in pods}
        active = [p for p in pods if phase[p["metadata"]["uid"]] not in ("Succeeded", "Failed")]
        succeeded = sum(1 for p in pods if phase[p["metadata"]["uid"]] == "Succeeded")
        failed = sum(1 for p in pods if phase[p["metadata"]["uid"]] == "Failed")
        # pods deleted after they finished still count: keep the larger of stored and seen
        succeeded = max(succeeded, int(status.get("succeeded") or 0))
        failed = max(failed, int(status.get("failed") or 0))
        if spec.get("suspend"):
            self._suspend(job, status, active, stamp)
            return
        if _true(conditions, "Suspended"):
            _set_condition(
                status, "Suspended", "False", stamp, reason="JobResumed", message="Job resumed"
            )
            status.pop("startTime", None)
        if not status.get("startTime"):
            status["startTime"] = stamp
        started = cluster_mod.parse_time(status["startTime"])
        deadline = spec.get("activeDeadlineSeconds")
        failure: tuple[str, str] | None = None  # (reason, message) of the Failed condition
        if deadline is not None and now >= started + int(deadline):
            failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
        elif failed > int(spec.get("backoffLimit", 6)):
            failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        if failure is not None:
            for pod in active:
                self._delete_pod(pod)
            self._finish(
                job,
                status,
                kind="Failed",
                stamp=stamp,
                reason=failure[0],
                message=failure[1],
                failed=failed + len(active),
                succeeded=succeeded,
            )
            return
        completions = int(spec.get("completions") or 1)
        if succeeded >= completions:
            for pod in active:
                self._delete_pod(pod)
            self._finish(
                job,
                status,
                kind="Complete",
                stamp=stamp,
                reason="",
                message="",
                failed=failed,
                succeeded=succeeded,
            )
            return
        want = min(int(spec.get("parallelism", 1)), completions - succeeded) - len(active)
        failed_pods = [p for p in pods if phase[p["metadata"]["uid"]] == "Failed"]
        created = self._start_pods(job, want, failed_pods, failed=failed, now=now)
        if deadline is not None:
            self.later(started + int(deadline) - now + 0.01, "job", uid)
        running = sum(1 for p in active if (p.get("status") or {}).get("phase") == "Running")
        counts = {"active": len(active) + created, "ready": running}
        self._write_counts(job, status, {**counts, "succeeded": succeeded, "failed": failed})

    def _write_counts(self, job: Obj, status: Obj, counts: dict[str, int]) -> None:
        """Write the Job's pod counts as the Job controller does (zero counts left out)."""
        status.update(counts)
        status["terminating"] = 0
        status["uncountedTerminatedPods"] = {}
        for field in ("succeeded", "failed", "active"):
            if not status[field]:
                status.pop(field)
        self._write_job_status(job, status)

    def _owned_pods(self, uid: str) -> list[Obj]:
        """The pods the Job ``uid`` controls (its controller ownerReference)."""
        return [
            p
            for res, p in self.cluster.dependents(uid)
            if res is PODS
            and any(
                r.get("uid") == uid and r.get("controller")
                for r in p["metadata"].get("ownerReferences") or []
            )
        ]

    def _suspend(self, job: Obj, status: Obj, active: list[Obj], stamp: str) -> None:
        """A suspended Job: its active pods deleted, the Suspended condition, no startTime."""
        for pod in active:
            self._delete_pod(pod)
        if not _true(status.get("conditions"), "Suspended"):
            _set_condition(
                status, "Suspended", "True", stamp, reason="JobSuspended", message="Job suspended"
            )
        status.pop("startTime", None)
        status["active"] = 0
        self._write_job_status(job, status)

    def _start_pods(
        self, job: Obj, want: int, failed_pods: list[Obj], *, failed: int, now: float
    ) -> int:
        """Create up to ``want`` pods, once the backoff after the last failed one has passed
        (else come back then); return how many were created."""
        if want <= 0:
            return 0
        uid = job["metadata"]["uid"]
        backoff = self.options.job_backoff_seconds * (2 ** max(failed - 1, 0)) if failed else 0
        last_failure = max((self._finished_at(p) for p in failed_pods), default=0.0)
        if failed and now < last_failure + backoff:
            self.later(last_failure + backoff - now, "job", uid)
            return 0
        created = 0
        for _ in range(want):
            if not self._create_pod(job):
                self.later(RETRY_SECONDS, "job", uid)
                break
            created += 1
        return created

    @staticmethod
    def _finished_at(pod: Obj) -> float:
        for s in (pod.get("status") or {}).get("containerStatuses") or []:
            finished = ((s.get("state") or {}).get("terminated") or {}).get("finishedAt")
            if finished:
                return cluster_mod.parse_time(finished)
        return 0.0

    def _finish(
        self,
        job: Obj,
        status: Obj,
        *,
        kind: str,
        stamp: str,
        reason: str,
        message: str,
        failed: int,
        succeeded: int,
    ) -> None:
        status["active"] = 0
        status.pop("active")
        status["ready"] = 0
        status["terminating"] = 0
        status["uncountedTerminatedPods"] = {}
        if failed:
            status["failed"] = failed
        if succeeded:
            status["succeeded"] = succeeded
        _set_condition(status, kind, "True", stamp, reason=reason, message=message)
        if kind == "Complete":
            status["completionTime"] = stamp
        stored = self._write_job_status(job, status)
        if stored is not None:
            self._event(
                stored,
                JOBS,
                "Normal" if kind == "Complete" else "Warning",
                reason or "Completed",
                message or "Job completed",
            )
            self._schedule_ttl(stored, _true(status["conditions"], kind))

    def _write_job_status(self, job: Obj, status: Obj) -> Obj | None:
        return self.cluster.write_status(JOBS, job, status)

    def _schedule_ttl(self, job: Obj, condition: Obj | None) -> None:
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        if ttl is None or condition is None:
            return
        finished = cluster_mod.parse_time(condition["lastTransitionTime"])
        self.later(finished + int(ttl) - self._now(), "ttl", job["metadata"]["uid"])

    def _do_ttl(self, uid: str) -> None:
        found = self.cluster.by_uid(uid)
        if found is None or found[0] is not JOBS:
            return
        job = found[1]
        conditions = (job.get("status") or {}).get("conditions")
        finished = _true(conditions, "Complete") or _true(conditions, "Failed")
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        if finished is None or ttl is None or job["metadata"].get("deletionTimestamp"):
            return
        due = cluster_mod.parse_time(finished["lastTransitionTime"]) + int(ttl)
        if self._now() < due:
            self.later(due - self._now(), "ttl", uid)
            return
        meta = job["metadata"]
        self.cluster.delete(JOBS, meta["namespace"], meta["name"], propagation="Foreground")

    def _create_pod(self, job: Obj) -> bool:
        meta = job["metadata"]
        template = cluster_mod.clone((job.get("spec") or {}).get("template") or {})
        tmeta = template.get("metadata") or {}
        pod = {
            "metadata": {
                "generateName": f"{meta['name']}-",
                "namespace": meta["namespace"],
                "labels": tmeta.get("labels") or {},
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template.get("spec") or {},
        }
        if tmeta.get("annotations"):
            pod["metadata"]["annotations"] = tmeta["annotations"]
        try:
            created = self.cluster.create(PODS, meta["namespace"], pod)
        except apierrors.ApiError as e:
            self._event(job, JOBS, "Warning", "FailedCreate", f"Error creating: {e.message}")
            return False
        self._event(
            job, JOBS, "Normal", "SuccessfulCreate", f"Created pod: {created['metadata']['name']}"
        )
        return True

    def _delete_pod(self, pod: Obj) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(apierrors.ApiError):
            self.cluster.delete(PODS, meta["namespace"], meta["name"], propagation="Background")

    def _event(
        self, obj: Obj, res: resources.Resource, kind: str, reason: str, message: str
    ) -> None:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        stamp = cluster_mod.now_text(self._now())
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": res.api_version,
                "kind": res.kind,
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": "job-controller" if res is JOBS else "kubelet"},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        with contextlib.suppress(apierrors.ApiError):
            self.cluster.create(EVENTS, namespace, event)

    # ---------------------------------------------------- scheduler, kubelet

    def _do_unscheduled(self) -> None:
        for pod in self.cluster.objects(PODS):
            if (
                not (pod.get("spec") or {}).get("nodeName")
                and (pod.get("status") or {}).get("phase") == "Pending"
            ):
                self.enqueue("pod", pod["metadata"]["uid"])

    def _schedule(self, pod: Obj) -> Obj | None:
        nodes = sorted(
            (
                n
                for n in self.cluster.objects(NODES)
                if not (n.get("spec") or {}).get("unschedulable")
                and not n["metadata"].get("deletionTimestamp")
            ),
            key=lambda n: n["metadata"]["name"],
        )
        status = cluster_mod.clone(pod.get("status") or {})
        stamp = cluster_mod.now_text(self._now())
        if not nodes:
            _set_condition(
                status,
                "PodScheduled",
                "False",
                stamp,
                reason="Unschedulable",
                message="0/0 nodes are available",
            )
            self.cluster.write_status(PODS, pod, status)
            return None
        node = nodes[self._node_turn % len(nodes)]["metadata"]["name"]
        self._node_turn += 1
        _set_condition(status, "PodScheduled", "True", stamp)
        spec = {**pod["spec"], "nodeName": node}
        return self.cluster.write(PODS, {**pod, "spec": spec, "status": status})

    def _do_pod(self, uid: str) -> None:
        found = self.cluster.by_uid(uid)
        if found is None or found[0] is not PODS:
            return
        pod = found[1]
        if (pod.get("status") or {}).get("phase") != "Pending" or pod["metadata"].get(
            "deletionTimestamp"
        ):
            return
        if uid in self._running:
            return
        if not (pod.get("spec") or {}).get("nodeName"):
            scheduled = self._schedule(pod)
            if scheduled is None:
                return
            pod = scheduled
        node = self.cluster.lookup(NODES, "", pod["spec"]["nodeName"])
        if node is None:
            return  # no kubelet on a node that does not exist: the pod stays Pending
        self._start_pod(pod)

    def _env(self, pod: Obj, container: Mapping[str, Any]) -> tuple[dict[str, str], str | None]:
        """Resolved env of ``container``, or the CreateContainerConfigError message."""
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for var in container.get("env") or []:
            name = var.get("name", "")
            source = var.get("valueFrom")
            if not source:
                env[name] = str(var.get("value") or "")
                continue
            for ref_kind, res in (("secretKeyRef", SECRETS), ("configMapKeyRef", CONFIGMAPS)):
                ref = source.get(ref_kind)
                if not ref:
                    continue
                obj = self.cluster.lookup(res, namespace, ref.get("name", ""))
                label = "secret" if res is SECRETS else "configmap"
                if obj is None:
                    if ref.get("optional"):
                        break
                    return env, f'{label} "{ref.get("name", "")}" not found'
                data = obj.get("data") or {}
                key = ref.get("key", "")
                if key not in data:
                    if ref.get("optional"):
                        break
                    kind = "Secret" if res is SECRETS else "ConfigMap"
                    return (
                        env,
                        f"couldn't find key {key} in {kind} {namespace}/{ref.get('name', '')}",
                    )
                if res is SECRETS:
                    env[name] = base64.b64decode(data[key]).decode(errors="replace")
                else:
                    env[name] = str(data[key])
                break
            field_ref = source.get("fieldRef")
            if field_ref:
                path = field_ref.get("fieldPath", "")
                value: Any = pod
                for part in path.split("."):
                    value = value.get(part) if isinstance(value, dict) else None
                env[name] = "" if value is None else str(value)
        return env, None

    def _container_status(
        self, container: Mapping[str, Any], state: Obj, *, digest: str | None, ready: bool
    ) -> Obj:
        image = container.get("image", "")
        out: Obj = {
            "name": container.get("name", ""),
            "state": state,
            "lastState": {},
            "ready": ready,
            "restartCount": 0,
            "image": image,
            "imageID": image_id(image, digest) if digest else "",
            "started": "running" in state,
        }
        if digest:
            out["containerID"] = f"containerd://{container.get('name', '')}-{digest[7:23]}"
        return out

    def _digest_for(self, image: str) -> str:
        _, _, _, digest = kubelet.split_image(image)
        return digest or self.digest_of(image)

    def _node_has(self, node: str, digest: str) -> bool:
        for other in self.cluster.objects(PODS):
            if (other.get("spec") or {}).get("nodeName") != node:
                continue
            if any(is_scan_container(c) for c in (other.get("spec") or {}).get("containers") or []):
                continue
            status = other.get("status") or {}
            for s in (status.get("containerStatuses") or []) + (
                status.get("initContainerStatuses") or []
            ):
                if str(s.get("imageID", "")).endswith(digest):
                    return True
        return False

    def _start_pod(self, pod: Obj) -> None:
        spec = pod.get("spec") or {}
        uid = pod["metadata"]["uid"]
        stamp = cluster_mod.now_text(self._now())
        status = cluster_mod.clone(pod.get("status") or {})
        status.setdefault("startTime", stamp)
        status["hostIP"] = "10.0.0.1"
        status["podIP"] = (
            status.get("podIP") or f"10.244.{len(uid) % 200}.{int(uid[:2], 16) % 250 + 2}"
        )
        init = spec.get("initContainers") or []
        containers = spec.get("containers") or []
        if self._blocked(pod, status, [*init, *containers], stamp=stamp):
            return
        status["initContainerStatuses"] = [
            self._container_status(
                c,
                {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": stamp,
                        "finishedAt": stamp,
                    }
                },
                digest=self._digest_for(c.get("image", "")),
                ready=True,
            )
            for c in init
        ]
        if not init:
            status.pop("initContainerStatuses")
        # imagePullPolicy Never: the image must already be on the node (a workload pod runs it)
        for container in containers:
            if container.get("imagePullPolicy") == "Never":
                digest = kubelet.split_image(container.get("image", ""))[3]
                if digest is None or not self._node_has(spec["nodeName"], digest):
                    message = (
                        f'Container image "{container.get("image", "")}" is not present '
                        "with pull policy of Never"
                    )
                    status["containerStatuses"] = [
                        self._container_status(
                            c,
                            {"waiting": {"reason": "ErrImageNeverPull", "message": message}}
                            if c is container
                            else {"waiting": {"reason": "PodInitializing"}},
                            digest=None,
                            ready=False,
                        )
                        for c in containers
                    ]
                    self.cluster.write_status(PODS, pod, status)
                    self._event(pod, PODS, "Warning", "ErrImageNeverPull", message)
                    self.later(RETRY_SECONDS * 2, "pod", uid)
                    return
        scan = next((c for c in containers if is_scan_container(c)), None)
        status["phase"] = "Running"
        status["containerStatuses"] = [
            self._container_status(
                c,
                {"running": {"startedAt": stamp}},
                digest=self._digest_for(c.get("image", "")),
                ready=True,
            )
            for c in containers
        ]
        _set_condition(status, "Initialized", "True", stamp)
        _set_condition(status, "ContainersReady", "True", stamp)
        _set_condition(status, "Ready", "True", stamp)
        stored = self.cluster.write_status(PODS, pod, status)
        if stored is None or scan is None:
            return
        env, _ = self._env(stored, scan)
        self._running.add(uid)
        self._pool.submit(self._scan, stored, scan, env)

    def _blocked(
        self, pod: Obj, status: Obj, containers: list[Mapping[str, Any]], *, stamp: str
    ) -> bool:
        """Whether a volume or an environment source is missing; then the pod waits."""
        # volumes first: the kubelet mounts them before it creates any container
        problem = self._mount_problem(pod)
        if problem is not None:
            self._mount_failed(pod, status, problem, stamp=stamp)
            return True
        # then the environment: a missing secret or key blocks every container
        for container in containers:
            _, problem = self._env(pod, container)
            if problem is not None:
                self._config_error(pod, status, problem, stamp=stamp)
                return True
        return False

    def _mount_problem(self, pod: Obj) -> str | None:
        """The kubelet's FailedMount message for the first ConfigMap or Secret volume whose
        object (or a key its items name) does not exist, unless optional; else None."""
        namespace = pod["metadata"]["namespace"]
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            for key, res, label in (("configMap", CONFIGMAPS, "configmap"),
                                    ("secret", SECRETS, "secret")):  # fmt: skip
                source = volume.get(key)
                if source is None or source.get("optional"):
                    continue
                name = source.get("name") or source.get("secretName") or ""
                found = self.cluster.lookup(res, namespace, name)
                why = f'{label} "{name}" not found'
                if found is not None:
                    missing = [i.get("key") for i in source.get("items") or []
                               if i.get("key") not in (found.get("data") or {})]  # fmt: skip
                    if not missing:
                        continue
                    what = "config" if res is CONFIGMAPS else "secret"
                    why = f"{label} references non-existent {what} key: {missing[0]}"
                return f'MountVolume.SetUp failed for volume "{volume.get("name", "")}" : {why}'
        return None

    def _mount_failed(self, pod: Obj, status: Obj, problem: str, *, stamp: str) -> None:
        """A volume cannot be mounted: the pod stays Pending, its containers waiting in
        ContainerCreating, a FailedMount event each try; the kubelet tries again later (the
        Job's activeDeadlineSeconds ends it if the object never comes)."""
        status["containerStatuses"] = [
            self._container_status(
                c, {"waiting": {"reason": "ContainerCreating"}}, digest=None, ready=False
            )
            for c in (pod.get("spec") or {}).get("containers") or []
        ]
        for condition in ("ContainersReady", "Ready"):
            _set_condition(status, condition, "False", stamp, reason="ContainersNotReady",
                           message="containers with unready status")  # fmt: skip
        self.cluster.write_status(PODS, pod, status)
        self._event(pod, PODS, "Warning", "FailedMount", problem)
        self.later(RETRY_SECONDS, "pod", pod["metadata"]["uid"])

    def _config_error(self, pod: Obj, status: Obj, problem: str, *, stamp: str) -> None:
        """A pod whose environment cannot be built (a missing Secret or key): every container
        waits in CreateContainerConfigError, and the kubelet tries again later."""
        status["containerStatuses"] = [
            self._container_status(
                c,
                {"waiting": {"reason": "CreateContainerConfigError", "message": problem}},
                digest=None,
                ready=False,
            )
            for c in (pod.get("spec") or {}).get("containers") or []
        ]
        _set_condition(
            status,
            "Ready",
            "False",
            stamp,
            reason="ContainersNotReady",
            message="containers with unready status",
        )
        self.cluster.write_status(PODS, pod, status)
        self._event(pod, PODS, "Warning", "Failed", f"Error: {problem}")
        self.later(RETRY_SECONDS, "pod", pod["metadata"]["uid"])

    def _scan(self, pod: Obj, container: Mapping[str, Any], env: Mapping[str, str]) -> None:
        try:
            exited = self._run_trivy(pod, container, env)
        except Exception as e:  # the pod must finish even if the emulator has a bug
            log.exception("scan pod %s", pod["metadata"]["name"])
            exited = kubelet.ContainerExit(1, f"emulator error: {type(e).__name__}\n")
        self.enqueue("finished", pod["metadata"]["uid"], container.get("name", ""), exited)

    def _run_trivy(
        self, pod: Obj, container: Mapping[str, Any], env: Mapping[str, str]
    ) -> kubelet.ContainerExit:
        """Run the scan container: real Trivy (podrun), or a recording without real pulls."""
        args = [str(a) for a in container.get("args") or []]
        now = self._now()
        node_mode = bool(args) and args[0] in ("rootfs", "fs", "filesystem")
        target = str(container.get("image", "")) if node_mode else (args[-1] if args else "")
        digest = kubelet.split_image(target)[3]
        if not self.options.real_pull:
            return kubelet.ContainerExit(0, self.reports.report_for(target, digest, now), digest)
        timeout = self._deadline(pod)
        world = self.trivy
        namespace = pod["metadata"]["namespace"]

        def lookup(kind: str, name: str) -> Obj | None:
            return self.cluster.lookup(SECRETS if kind == "Secret" else CONFIGMAPS, namespace, name)

        try:
            if node_mode:
                init = (pod.get("spec") or {}).get("initContainers") or []
                exited = podrun.run_node(world, pod, init=init, container=container, env=env,
                                          timeout=timeout, lookup=lookup)  # fmt: skip
            else:
                exited = podrun.run_registry(world, pod, container=container, env=env,
                                              timeout=timeout, lookup=lookup)  # fmt: skip
        except podrun.PodRunError as e:
            if node_mode and self.reports.find(target, digest) is not None:
                # an image no registry holds (a made-up digest): its recording stands in
                return kubelet.ContainerExit(
                    0, self.reports.report_for(target, digest, now), digest
                )
            return kubelet.ContainerExit(128, f"{e}\n", digest)
        if exited.exit_code == 0 and self.reports.find(target, digest) is not None:
            # the test's point is this report's content; Trivy still had to pull and succeed
            return kubelet.ContainerExit(0, self.reports.report_for(target, digest, now), digest)
        return exited

    def _deadline(self, pod: Obj) -> float:
        """Seconds the scan container may run: its Job's activeDeadlineSeconds (plus a margin
        for the Job controller to act first), else the pod's own, else 600."""
        for ref in pod["metadata"].get("ownerReferences") or []:
            found = self.cluster.by_uid(ref.get("uid", ""))
            if found is not None and found[0] is JOBS:
                seconds = (found[1].get("spec") or {}).get("activeDeadlineSeconds")
                if seconds:
                    return float(seconds) + 5
        return float((pod.get("spec") or {}).get("activeDeadlineSeconds") or 600)

    def _do_finished(self, uid: str, name: str, exited: kubelet.ContainerExit) -> None:
        self._running.discard(uid)
        found = self.cluster.by_uid(uid)
        if found is None or found[0] is not PODS:
            return
        pod = found[1]
        stamp = cluster_mod.now_text(self._now())
        status = cluster_mod.clone(pod.get("status") or {})
        ok = exited.exit_code == 0
        statuses = []
        for s in status.get("containerStatuses") or []:
            started = ((s.get("state") or {}).get("running") or {}).get("startedAt", stamp)
            terminated = {
                "exitCode": exited.exit_code if s.get("name") == name else 0,
                "reason": "Completed" if ok or s.get("name") != name else "Error",
                "startedAt": started,
                "finishedAt": stamp,
                "containerID": s.get("containerID", ""),
            }
            statuses.append(
                {**s, "state": {"terminated": terminated}, "ready": False, "started": False}
            )
        status["containerStatuses"] = statuses
        status["phase"] = "Succeeded" if ok else "Failed"
        _set_condition(status, "Ready", "False", stamp, reason="PodCompleted")
        _set_condition(status, "ContainersReady", "False", stamp, reason="PodCompleted")
        with self.cluster.lock:
            self.cluster.logs[uid] = {name: exited.log}
            self.cluster.write_status(PODS, pod, status)
