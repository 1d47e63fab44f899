"""The scheduler and the kubelet of the emulated cluster's pods.

It acts on the work queue of ``controllers``: ``do_pod`` for a Pending pod (schedule
it, check its volumes and environment, start it), ``do_unscheduled`` when a node
appears, ``do_finished`` when a scan container has exited. Scan containers run in a
small thread pool (real Trivy through ``podrun``, or a recorded report) and post how
they exited back through the injected ``enqueue``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

from scanqueue.sim import cluster as cluster_mod
from scanqueue.sim import kubelet, objstatus, podrun, resources
from scanqueue.sim import options as options_mod

log = logging.getLogger(__name__)
Obj = dict[str, Any]
PODS = resources.BY_KEY["pods"]
JOBS = resources.BY_KEY["jobs.batch"]
NODES = resources.BY_KEY["nodes"]
SECRETS = resources.BY_KEY["secrets"]
CONFIGMAPS = resources.BY_KEY["configmaps"]
RETRY_SECONDS = 0.5  # a blocked pod is tried again this often


def is_scan_container(container: Mapping[str, Any]) -> bool:
    command = container.get("command") or []
    return bool(command) and str(command[0]).rsplit("/", 1)[-1] == "trivy"


def image_id(image: str, digest: str) -> str:
    """containerd's form of status.containerStatuses[].imageID: "host/repo@sha256:..."."""
    return f"{kubelet.repository(image)}@{digest}"


class Kubelet:
    """Schedules pods onto nodes round-robin and runs them, as one kubelet for every node.

    Given the cluster's state, the recorded reports, the real-Trivy world, how an image's
    digest is resolved, the emulator's frozen options, and the work queue's ``enqueue`` and
    ``later`` to come back to a pod.
    """

    def __init__(
        self,
        cluster: cluster_mod.Cluster,
        *,
        reports: kubelet.Reports,
        trivy: podrun.World,
        digest_of: Callable[[str], str],
        options: options_mod.EmulatorOptions,
        enqueue: Callable[..., None],
        later: Callable[..., None],
    ) -> None:
        self.cluster = cluster
        self._events = objstatus.Events(cluster)
        self.reports = reports
        self.trivy = trivy
        self.digest_of = digest_of
        self.options = options
        self.enqueue = enqueue
        self.later = later
        self._running: set[str] = set()  # pod uids whose scan container is under way
        self._node_turn = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=options.pull_workers, thread_name_prefix="sim-pull"
        )

    def busy(self) -> bool:
        """Whether a scan container is still running."""
        return bool(self._running)

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def do_unscheduled(self) -> None:
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
        stamp = cluster_mod.now_text(self.cluster.clock())
        if not nodes:
            objstatus.set_condition(
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
        objstatus.set_condition(status, "PodScheduled", "True", stamp)
        spec = {**pod["spec"], "nodeName": node}
        return self.cluster.write(PODS, {**pod, "spec": spec, "status": status})

    def do_pod(self, uid: str) -> None:
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
        stamp = cluster_mod.now_text(self.cluster.clock())
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
                    self._events.record(pod, PODS, "Warning", "ErrImageNeverPull", message)
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
        objstatus.set_condition(status, "Initialized", "True", stamp)
        objstatus.set_condition(status, "ContainersReady", "True", stamp)
        objstatus.set_condition(status, "Ready", "True", stamp)
        stored = self.cluster.write_status(PODS, pod, status)
        if stored is None or scan is None:
            return
        self._start_scan(stored, scan)

    def _start_scan(self, pod: Obj, container: Mapping[str, Any]) -> None:
        """Run the scan container of the Running ``pod``; its exit comes back as "finished"."""
        env, _ = self._env(pod, container)
        self._running.add(pod["metadata"]["uid"])
        if self.options.real_pull:
            self._pool.submit(self._scan, pod, container, env)
        else:
            # a recorded report, printed at once: no pull to wait for, so no pool thread (a
            # thread woken per scan pod, and the Future, cost more than printing the report);
            # the exit still comes back through the queue, after the work already there
            self._scan(pod, container, env)

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
            objstatus.set_condition(status, condition, "False", stamp, reason="ContainersNotReady",
                           message="containers with unready status")  # fmt: skip
        self.cluster.write_status(PODS, pod, status)
        self._events.record(pod, PODS, "Warning", "FailedMount", problem)
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
        objstatus.set_condition(
            status,
            "Ready",
            "False",
            stamp,
            reason="ContainersNotReady",
            message="containers with unready status",
        )
        self.cluster.write_status(PODS, pod, status)
        self._events.record(pod, PODS, "Warning", "Failed", f"Error: {problem}")
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
        now = self.cluster.clock()
        node_mode = bool(args) and args[0] in ("rootfs", "fs", "filesystem")
        target = str(container.get("image", "")) if node_mode else (args[-1] if args else "")
        digest = kubelet.split_image(target)[3]
        # a recording prints what Trivy would: no Packages unless asked for
        recorded = functools.partial(self.reports.report_for, target, digest, now,
                                     packages="--list-all-pkgs" in args)  # fmt: skip
        if not self.options.real_pull:
            return kubelet.ContainerExit(0, recorded(), digest)
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
                return kubelet.ContainerExit(0, recorded(), digest)
            return kubelet.ContainerExit(128, f"{e}\n", digest)
        if exited.exit_code == 0 and self.reports.find(target, digest) is not None:
            # the test's point is this report's content; Trivy still had to pull and succeed
            return kubelet.ContainerExit(0, recorded(), digest)
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

    def do_finished(self, uid: str, name: str, exited: kubelet.ContainerExit) -> None:
        self._running.discard(uid)
        found = self.cluster.by_uid(uid)
        if found is None or found[0] is not PODS:
            return
        pod = found[1]
        stamp = cluster_mod.now_text(self.cluster.clock())
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
        objstatus.set_condition(status, "Ready", "False", stamp, reason="PodCompleted")
        objstatus.set_condition(status, "ContainersReady", "False", stamp, reason="PodCompleted")
        with self.cluster.lock:
            self.cluster.logs[uid] = {name: exited.log}
            self.cluster.write_status(PODS, pod, status)
