"""The Job controller and the TTL-after-finished controller of the emulated cluster.

It acts on the work queue of ``controllers``: ``do_job`` when a Job or one of its pods
changes, ``do_ttl`` when a finished Job's time to live is up; what must happen later
(a backoff, a deadline, a blocked create) goes back through the injected ``later``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from scanqueue.sim import apierrors, objstatus, resources
from scanqueue.sim import cluster as cluster_mod
from scanqueue.sim import options as options_mod

Obj = dict[str, Any]
PODS = resources.BY_KEY["pods"]
JOBS = resources.BY_KEY["jobs.batch"]
JOB_CONTROLLER = "kubernetes.io/job-controller"
RETRY_SECONDS = 0.5  # a Job whose pod cannot be created is tried again this often


def _failure(spec: Obj, *, started: float, now: float, failed: int) -> tuple[str, str] | None:
    """(reason, message) of the Failed condition a Job started at ``started`` with
    ``failed`` failed pods has reached at ``now``, or None."""
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and now >= started + int(deadline):
        return ("DeadlineExceeded", "Job was active longer than specified deadline")
    if failed > int(spec.get("backoffLimit", 6)):
        return ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    return None


class JobController:
    """Creates a Job's pods, counts them into its status, finishes and expires it.

    Given the cluster's state, ``later(delay, *item)`` to come back to a Job, and the
    emulator's frozen options (the pod backoff).
    """

    def __init__(
        self,
        cluster: cluster_mod.Cluster,
        *,
        later: Callable[..., None],
        options: options_mod.EmulatorOptions,
    ) -> None:
        self.cluster = cluster
        self._events = objstatus.Events(cluster)
        self.later = later
        self.options = options

    def _now(self) -> float:
        return self.cluster.clock()

    def do_job(self, uid: str) -> None:
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
        finished = objstatus.true_condition(conditions, "Complete") or objstatus.true_condition(
            conditions, "Failed"
        )
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
        if objstatus.true_condition(conditions, "Suspended"):
            objstatus.set_condition(
                status, "Suspended", "False", stamp, reason="JobResumed", message="Job resumed"
            )
            status.pop("startTime", None)
        if not status.get("startTime"):
            status["startTime"] = stamp
        started = cluster_mod.parse_time(status["startTime"])
        deadline = spec.get("activeDeadlineSeconds")
        failure = _failure(spec, started=started, now=now, failed=failed)
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
        if not objstatus.true_condition(status.get("conditions"), "Suspended"):
            objstatus.set_condition(
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
        objstatus.set_condition(status, kind, "True", stamp, reason=reason, message=message)
        if kind == "Complete":
            status["completionTime"] = stamp
        stored = self._write_job_status(job, status)
        if stored is not None:
            self._events.record(
                stored,
                JOBS,
                "Normal" if kind == "Complete" else "Warning",
                reason or "Completed",
                message or "Job completed",
            )
            self._schedule_ttl(stored, objstatus.true_condition(status["conditions"], kind))

    def _write_job_status(self, job: Obj, status: Obj) -> Obj | None:
        return self.cluster.write_status(JOBS, job, status)

    def _schedule_ttl(self, job: Obj, condition: Obj | None) -> None:
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        if ttl is None or condition is None:
            return
        finished = cluster_mod.parse_time(condition["lastTransitionTime"])
        self.later(finished + int(ttl) - self._now(), "ttl", job["metadata"]["uid"])

    def do_ttl(self, uid: str) -> None:
        found = self.cluster.by_uid(uid)
        if found is None or found[0] is not JOBS:
            return
        job = found[1]
        conditions = (job.get("status") or {}).get("conditions")
        finished = objstatus.true_condition(conditions, "Complete") or objstatus.true_condition(
            conditions, "Failed"
        )
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
            # built here from a copy of the template: the cluster may keep it as it is
            created = self.cluster.create(PODS, meta["namespace"], pod, owned=True)
        except apierrors.ApiError as e:
            self._events.record(
                job, JOBS, "Warning", "FailedCreate", f"Error creating: {e.message}"
            )
            return False
        self._events.record(
            job,
            JOBS,
            "Normal",
            "SuccessfulCreate",
            f"Created pod: {created['metadata']['name']}",
        )
        return True

    def _delete_pod(self, pod: Obj) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(apierrors.ApiError):
            self.cluster.delete(PODS, meta["namespace"], meta["name"], propagation="Background")
