"""Status conditions and Events, written as the Job controller and the kubelet write them."""

from __future__ import annotations

import contextlib
from typing import Any

from scanqueue.sim import apierrors, resources
from scanqueue.sim import cluster as cluster_mod

Obj = dict[str, Any]
JOBS = resources.BY_KEY["jobs.batch"]
EVENTS = resources.BY_KEY["events"]


def true_condition(conditions: list[Obj] | None, kind: str) -> Obj | None:
    """The condition of type ``kind`` whose status is "True", or None."""
    return next(
        (c for c in conditions or [] if c.get("type") == kind and c.get("status") == "True"), None
    )


def set_condition(
    status: Obj, kind: str, value: str, now: str, *, reason: str = "", message: str = ""
) -> None:
    """Set (replace) the condition of type ``kind`` in ``status``, stamped ``now``."""
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


class Events:
    """Writes Events about Jobs (as the job-controller) and pods (as the kubelet)."""

    def __init__(self, cluster: cluster_mod.Cluster) -> None:
        self.cluster = cluster

    def record(
        self, obj: Obj, res: resources.Resource, kind: str, reason: str, message: str
    ) -> None:
        """An Event of type ``kind`` involving ``obj``; a refused create is dropped."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        stamp = cluster_mod.now_text(self.cluster.clock())
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
            self.cluster.create(EVENTS, namespace, event, owned=True)
