"""The rest of the cluster on one work queue: garbage collector, Job controller, kubelet.

One background thread reacts to the change events of the ``Cluster`` (a
de-duplicated work queue keyed by object uid, plus a timer heap for
deadlines, TTLs and retries), so that the work per change is proportional to
the objects it touches, never to the cluster's size. The garbage collector is
here; the Job and TTL controllers are ``jobcontroller``, the scheduler and the
kubelet (whose scan containers run in a small thread pool and post how they
exited back to the queue) are ``podkubelet``.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from scanqueue.sim import apierrors, jobcontroller, kubelet, podkubelet, podrun, resources
from scanqueue.sim import cluster as cluster_mod
from scanqueue.sim import options as options_mod

log = logging.getLogger(__name__)
Obj = dict[str, Any]
PODS = resources.BY_KEY["pods"]
JOBS = resources.BY_KEY["jobs.batch"]
NODES = resources.BY_KEY["nodes"]


class Controllers:
    """The garbage collector, the Job controller and the kubelet, on one queue and one thread.

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
        self._lock = threading.Condition()
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._queued: set[tuple[Any, ...]] = set()
        self._timers: list[tuple[float, int, tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.jobs = jobcontroller.JobController(cluster, later=self.later, options=options)
        self.kubelet = podkubelet.Kubelet(
            cluster,
            reports=reports,
            trivy=trivy,
            digest_of=digest_of,
            options=options,
            enqueue=self.enqueue,
            later=self.later,
        )
        self._handlers: dict[str, Callable[..., None]] = {
            "gc": self._do_gc,
            "owners": self._do_owners,
            "foreground": self._do_foreground,
            "job": self.jobs.do_job,
            "ttl": self.jobs.do_ttl,
            "unscheduled": self.kubelet.do_unscheduled,
            "pod": self.kubelet.do_pod,
            "finished": self.kubelet.do_finished,
        }
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
        self.kubelet.stop()

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
            return not self._queue and not self.kubelet.busy()

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
        self._handlers[item[0]](*item[1:])

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
