"""Fixtures for the watcher: workloads in the emulator, and watchers over real Redis + Postgres.

``watch_farm`` starts ``ClusterWatcher``s (one per emulated cluster) against
the test's Redis and fresh Postgres database, with short flush and watch
timings, and stops them after the test. ``Workloads`` creates Deployments
(with their ReplicaSet), StatefulSets, DaemonSets, CronJobs (with a Job) and
bare pods in an emulator, owner references and all; the emulator's kubelet
then runs the pods and reports an ``imageID`` for each container.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
import redis

from scanqueue import config, dedupe, discovery, kube, publish, store, watcher
from tests.support import sim_fixtures

FAST = watcher.WatchOptions(
    flush_interval_seconds=0.05,
    flush_rows=500,
    reevaluate_interval_seconds=3600.0,  # tests call reevaluate() when they mean it
    watch_timeout_seconds=5,
    backoff_initial_seconds=0.05,
    backoff_max_seconds=0.5,
)


def _labels(name: str) -> dict[str, str]:
    return {"app": name}


def _template(name: str, image: str, pull_secrets: Sequence[str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": image}]}
    if pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in pull_secrets]
    return {"metadata": {"labels": _labels(name)}, "spec": spec}


def _owner(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


class Workloads:
    """Creates workloads and their pods in one emulator (no Deployment controller there)."""

    def __init__(self, sim: sim_fixtures.SimCluster) -> None:
        self.sim = sim
        self._namespaces: set[str] = set()
        self._owners: dict[tuple[str, str], dict[str, Any]] = {}  # (ns, workload) -> pod owner
        self._specs: dict[tuple[str, str], dict[str, Any]] = {}
        self._counts: dict[tuple[str, str], int] = {}

    def namespace(self, name: str) -> None:
        if name not in self._namespaces and self.sim.get("Namespace", None, name) is None:
            self.sim.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        self._namespaces.add(name)

    def pull_secret(self, namespace: str, name: str, auths: Mapping[str, Any]) -> None:
        self.namespace(namespace)
        content = json.dumps({"auths": auths}).encode()
        self.sim.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": base64.b64encode(content).decode()},
            }
        )

    def _create(self, kind: str, api_version: str, namespace: str, name: str, spec: Any) -> Any:
        return self.sim.create(
            {
                "apiVersion": api_version,
                "kind": kind,
                "metadata": {"name": name, "namespace": namespace, "labels": _labels(name)},
                "spec": spec,
            }
        )

    def deployment(
        self,
        namespace: str,
        name: str,
        image: str,
        replicas: int,
        *,
        pull_secrets: Sequence[str] = (),
        revision: str = "1",
        template_hash: bool = True,
    ) -> list[str]:
        """A Deployment, its ReplicaSet ``<name>-<revision>`` and ``replicas`` pods.

        As the Deployment controller does, the pods carry ``pod-template-hash=<revision>``
        (unless ``template_hash`` is false: then finding the Deployment takes a read).
        """
        self.namespace(namespace)
        template = _template(name, image, pull_secrets)
        selector = {"matchLabels": _labels(name)}
        deployment = self.sim.get("Deployment", namespace, name) or self._create(
            "Deployment",
            "apps/v1",
            namespace,
            name,
            {"replicas": replicas, "selector": selector, "template": template},
        )
        rs_name = f"{name}-{revision}"
        template = json.loads(json.dumps(template))
        if template_hash:
            template["metadata"]["labels"]["pod-template-hash"] = revision
        replicaset = self.sim.create(
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": rs_name,
                    "namespace": namespace,
                    "labels": _labels(name),
                    "ownerReferences": [_owner(deployment)],
                },
                "spec": {"replicas": replicas, "selector": selector, "template": template},
            }
        )
        return self._pods(namespace, rs_name, replicaset, template, replicas)

    def scale(self, namespace: str, name: str, replicas: int, *, revision: str = "1") -> list[str]:
        """Add pods to the ReplicaSet ``<name>-<revision>`` up to ``replicas``."""
        rs_name = f"{name}-{revision}"
        key = (namespace, rs_name)
        more = replicas - self._counts[key]
        return self._pods(namespace, rs_name, self._owners[key], self._specs[key], more)

    def statefulset(self, namespace: str, name: str, image: str, replicas: int) -> list[str]:
        self.namespace(namespace)
        template = _template(name, image, ())
        owner = self._create(
            "StatefulSet",
            "apps/v1",
            namespace,
            name,
            {
                "replicas": replicas,
                "serviceName": name,
                "selector": {"matchLabels": _labels(name)},
                "template": template,
            },
        )
        return self._pods(namespace, name, owner, template, replicas, ordinal=True)

    def daemonset(self, namespace: str, name: str, image: str, nodes: int) -> list[str]:
        self.namespace(namespace)
        template = _template(name, image, ())
        owner = self._create(
            "DaemonSet",
            "apps/v1",
            namespace,
            name,
            {"selector": {"matchLabels": _labels(name)}, "template": template},
        )
        return self._pods(namespace, name, owner, template, nodes)

    def cronjob(self, namespace: str, name: str, image: str, pods: int) -> None:
        """A CronJob and one Job ``<name>-1`` it started; the Job controller makes ``pods`` pods."""
        self.namespace(namespace)
        template = _template(name, image, ())
        template["spec"]["restartPolicy"] = "Never"
        cronjob = self._create(
            "CronJob",
            "batch/v1",
            namespace,
            name,
            {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}},
        )
        self.sim.create(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {
                    "name": f"{name}-1",
                    "namespace": namespace,
                    "ownerReferences": [_owner(cronjob)],
                },
                "spec": {"template": template, "parallelism": pods, "completions": pods},
            }
        )

    def bare_pod(self, namespace: str, name: str, image: str, **spec: Any) -> str:
        self.namespace(namespace)
        body = {"containers": [{"name": "app", "image": image}], **spec}
        self.sim.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace},
                "spec": body,
            }
        )
        return name

    def _pods(
        self,
        namespace: str,
        base: str,
        owner: dict[str, Any],
        template: dict[str, Any],
        count: int,
        *,
        ordinal: bool = False,
    ) -> list[str]:
        key = (namespace, base)
        self._owners[key], self._specs[key] = owner, template
        start = self._counts.get(key, 0)
        names = []
        for i in range(start, start + count):
            name = f"{base}-{i}" if ordinal else f"{base}-p{i:04d}"
            self.sim.create(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "labels": dict(template["metadata"]["labels"]),
                        "ownerReferences": [_owner(owner)],
                    },
                    "spec": json.loads(json.dumps(template["spec"])),
                }
            )
            names.append(name)
        self._counts[key] = start + count
        return names


class WatchFarm:
    """Watchers of emulated clusters writing to one Redis and one Postgres database."""

    def __init__(self, redis_url: str, database_url: str) -> None:
        self.redis_url = redis_url
        self.database_url = database_url
        self.redis = dedupe.client(redis_url)
        self.raw = redis.Redis.from_url(redis_url)
        self.pool = store.pool(database_url)
        self.scan = config.ScanSettings()
        self._running: list[tuple[watcher.ClusterWatcher, threading.Event, threading.Thread]] = []
        self._publishers: list[publish.Publisher] = []
        self._clients: list[Any] = []

    def watch(
        self,
        sim: sim_fixtures.SimCluster,
        name: str,
        *,
        options: watcher.WatchOptions = FAST,
        **cluster: Any,
    ) -> watcher.ClusterWatcher:
        """Start watching ``sim`` as cluster ``name`` (ClusterSettings keyword arguments)."""
        settings = config.ClusterSettings(name=name, kubeconfig=str(sim.kubeconfig), **cluster)
        api = kube.api_client(settings)
        self._clients.append(api)
        publisher = publish.Publisher(self.redis_url)
        self._publishers.append(publisher)
        stop = threading.Event()
        w = watcher.ClusterWatcher(
            cluster=settings,
            scan=self.scan,
            api=api,
            redis_client=self.redis,
            publisher=publisher,
            pool=self.pool,
            stop=stop,
            options=options,
        )
        self._running.append((w, stop, w.start()))
        return w

    def stop(self, w: watcher.ClusterWatcher) -> None:
        for running, stop, thread in self._running:
            if running is w:
                stop.set()
                thread.join(30)
                assert not thread.is_alive(), f"watcher {w.name} did not stop"

    def close(self) -> None:
        for _, stop, _ in self._running:
            stop.set()
        for _, _, thread in self._running:
            thread.join(30)
        for publisher in self._publishers:
            publisher.close()
        for client in self._clients:
            client.close()
        self.pool.close()
        self.redis.close()
        self.raw.close()

    # --------------------------------------------------------------- reading

    def queued(self, cluster: str) -> list[dict[str, Any]]:
        """The raw messages on ``scan.<cluster>``, oldest first."""
        raw = self.raw.lrange(publish.queue_name(cluster), 0, -1)
        return [json.loads(m) for m in reversed(raw)]

    def requests(self, cluster: str) -> list[discovery.ScanRequest]:
        """The scan requests queued for ``cluster``, decoded as a worker would."""
        out = []
        for message in self.queued(cluster):
            _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            out.append(discovery.from_payload(kwargs["request"]))
        return out

    def inventory(self, cluster: str) -> list[tuple[Any, ...]]:
        """Live containers of ``cluster``: (namespace, kind, workload, pod, container, digest)."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                """SELECT c.namespace, w.kind, w.name, c.pod, c.container, c.digest
                     FROM containers c
                     JOIN clusters cl ON cl.id = c.cluster_id
                     JOIN workloads w ON w.id = c.workload_id
                    WHERE cl.name = %s AND c.gone_at IS NULL
                    ORDER BY 1, 4, 5""",
                (cluster,),
            ).fetchall()
        return [tuple(r) for r in rows]

    def settle(
        self,
        w: watcher.ClusterWatcher,
        *,
        containers: int,
        timeout: float = 60.0,
    ) -> list[tuple[Any, ...]]:
        """Wait until ``w`` is idle with ``containers`` live containers in the inventory."""
        wait_for(
            lambda: w.idle() and len(self.inventory(w.name)) == containers,
            timeout=timeout,
            what=lambda: (
                f"{w.name}: {containers} containers in the inventory "
                f"(have {len(self.inventory(w.name))}, idle={w.idle()})"
            ),
        )
        return self.inventory(w.name)


def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 60.0, what: str | Callable[[], str] = ""
) -> Any:
    """Poll ``predicate`` until truthy; fail the test naming ``what`` after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout}s waiting for {text or 'a condition'}")
        time.sleep(0.05)


@pytest.fixture
def watch_farm(redis_url: str, database_url: str) -> Iterator[WatchFarm]:
    """Watchers over the test's Redis and fresh database; all stopped after the test."""
    farm = WatchFarm(redis_url, database_url)
    try:
        yield farm
    finally:
        farm.close()
