"""The emulator as one object: API server, controllers and kubelet, started in a thread.

It builds the parts and hands each what it needs (the cluster's state, faults, reports,
request counts, the frozen ``EmulatorOptions``); no part holds the emulator itself.

``Emulator(...).start()`` listens on 127.0.0.1 and a free port; ``url``,
``kubeconfig(path)`` and ``api_client()`` connect the official client to it.
The in-process methods (``create``, ``get``, ``list``, ``delete``,
``set_report``, ``faults``, ``request_counts``) let tests arrange and inspect
the cluster without going through HTTP; they return deep copies, so a caller
cannot change the cluster behind its back. ``scanqueue sim serve`` and the
pytest fixtures both build on this class.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from scanqueue.sim import (
    apierrors,
    bodies,
    controllers,
    counts,
    faults,
    kubelet,
    podrun,
    resources,
    server,
    trivydb,
)
from scanqueue.sim import cluster as cluster_mod
from scanqueue.sim import options as options_mod

Obj = dict[str, Any]


def resource(kind: str) -> resources.Resource:
    """The resource for a kind ("Pod"), plural ("pods") or key ("jobs.batch")."""
    if kind in resources.BY_KEY:
        return resources.BY_KEY[kind]
    for res in resources.RESOURCES:
        if kind in (res.kind, res.plural, res.singular, *res.short_names):
            return res
    raise KeyError(f"the emulator does not serve {kind!r}")


def to_dict(obj: Any) -> Obj:
    """A camelCase dict from a dict or a ``kubernetes`` client model."""
    if isinstance(obj, dict):
        return cluster_mod.clone(obj)
    from kubernetes import client

    out = client.ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    if not isinstance(out, dict):
        raise TypeError(f"cannot turn {type(obj).__name__} into an object dict")
    return out


class Emulator:
    """A strict Kubernetes API emulator with a Job controller and a kubelet for scan pods."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        kube_version: str = "1.30",
        history: int = 50_000,
        validate: bool = True,
        real_pull: bool = True,
        nodes: tuple[str, ...] = ("node-1",),
        watch_timeout: float = 1800.0,
        bookmark_interval: float = 5.0,
        job_backoff_seconds: float = 0.1,
        pull_workers: int = 8,
        name: str = "sim",
        trivy_dir: str | Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.name = name
        self.options = options_mod.EmulatorOptions(
            kube_version=kube_version,
            real_pull=real_pull,
            watch_timeout=watch_timeout,
            bookmark_interval=bookmark_interval,
            job_backoff_seconds=job_backoff_seconds,
            pull_workers=pull_workers,
        )
        self.kube_version = kube_version
        self.cluster = cluster_mod.Cluster(
            kube_version=kube_version, history=history, validate=validate
        )
        self.faults = faults.Faults()
        self.reports = kubelet.Reports()
        # real Trivy for scan pods: the DB, fetched node images, a Trivy server on demand
        # (in ``trivy_dir``, kept; else in a temporary directory removed by stop())
        self.trivy = podrun.World(trivy_dir)
        self.digests: dict[
            str, str
        ] = {}  # image reference -> digest, for pods not pinned by digest
        self.controllers = controllers.Controllers(
            self.cluster,
            reports=self.reports,
            trivy=self.trivy,
            digest_of=self.digest_of,
            options=self.options,
        )
        self._stopping = threading.Event()
        self._counts = counts.RequestCounts()
        self._server: server.Server | None = None
        self._thread: threading.Thread | None = None
        for node in nodes:
            self.add_node(node)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Emulator:
        self._server = server.Server(
            (self.host, self.port),
            cluster=self.cluster,
            faults=self.faults,
            counts=self._counts,
            options=self.options,
            stopping=self._stopping,
        )
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"sim-http-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self.controllers.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.cluster.wake_all()
        self.controllers.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.close_connections()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self.trivy.close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def version_info(self) -> Obj:
        return server.version_info(self.kube_version)

    def kubeconfig(self, path: str | Path, *, context: str | None = None) -> Path:
        """Write a kubeconfig (0600) pointing at this emulator; return its path."""
        name = context or self.name
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": name, "cluster": {"server": self.url}}],
            "users": [{"name": name, "user": {"token": f"{name}-token"}}],
            "contexts": [
                {"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}
            ],
            "current-context": name,
            "preferences": {},
        }
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(doc, sort_keys=False))
        target.chmod(0o600)
        return target

    def api_client(self) -> Any:
        """An official ``kubernetes.client.ApiClient`` for this emulator (close it after use)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        configuration.api_key = {"BearerToken": f"{self.name}-token"}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return client.ApiClient(configuration)

    # ------------------------------------------------------------- counters

    def request_counts(self) -> collections.Counter[tuple[str, str]]:
        """Requests served so far by (verb, resource): ("list", "pods"), ("get", "pods/log")."""
        return self._counts.snapshot()

    def reset_counts(self) -> None:
        self._counts.reset()

    # ------------------------------------------------------ in-process API

    def create(self, obj: Any, *, namespace: str | None = None, keep_status: bool = False) -> Obj:
        """Create ``obj`` (dict or client model) as the API would.

        ``keep_status`` keeps a given status (the API resets it), as if a controller wrote it.
        """
        body = to_dict(obj)
        res = resources.by_kind(str(body.get("apiVersion", "")), str(body.get("kind", "")))
        if res is None:
            raise KeyError(
                f"the emulator does not serve {body.get('apiVersion')} {body.get('kind')}"
            )
        ns = namespace or (body.get("metadata") or {}).get("namespace") or ""
        created = self.cluster.create(res, ns, body, keep_status=keep_status)
        return cluster_mod.clone(bodies.typed(res, created))

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        """The object, or None when it does not exist."""
        res = resource(kind)
        found = self.cluster.lookup(res, namespace or "", name)
        return None if found is None else cluster_mod.clone(bodies.typed(res, found))

    def list(
        self, kind: str, namespace: str | None = None, *, label_selector: str | None = None
    ) -> list[Obj]:
        res = resource(kind)
        found = self.cluster.list(res, namespace, label_selector=label_selector)
        return [cluster_mod.clone(bodies.typed(res, o)) for o in found.items]

    def delete(
        self, kind: str, namespace: str | None, name: str, *, propagation: str | None = None
    ) -> None:
        self.cluster.delete(resource(kind), namespace or "", name, propagation=propagation)

    def replace(self, obj: Any) -> Obj:
        body = to_dict(obj)
        res = resource(str(body.get("kind")))
        meta = body.get("metadata") or {}
        stored = self.cluster.replace(res, meta.get("namespace", ""), meta["name"], body)
        return cluster_mod.clone(bodies.typed(res, stored))

    def set_status(
        self, kind: str, namespace: str | None, name: str, status: Mapping[str, Any]
    ) -> Obj:
        """Replace an object's status, as its controller or kubelet would."""
        res = resource(kind)
        current = self.cluster.get(res, namespace or "", name)
        stored = self.cluster.write_status(res, current, cluster_mod.clone(dict(status)))
        if stored is None:
            raise apierrors.not_found(res, name)
        return cluster_mod.clone(bodies.typed(res, stored))

    def pod_log(self, namespace: str, name: str, container: str | None = None) -> str | None:
        pod = self.cluster.lookup(resources.BY_KEY["pods"], namespace, name)
        if pod is None:
            return None
        logs = self.cluster.logs.get(pod["metadata"]["uid"], {})
        if container is None:
            return next(iter(logs.values()), None)
        return logs.get(container)

    def add_node(self, name: str, *, labels: Mapping[str, str] | None = None) -> Obj:
        stamp = cluster_mod.now_text()
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    **(labels or {}),
                },
            },
            "spec": {},
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": stamp,
                        "lastTransitionTime": stamp,
                    }
                ],
                "addresses": [{"type": "Hostname", "address": name}],
                "nodeInfo": {
                    "architecture": "amd64",
                    "bootID": "",
                    "containerRuntimeVersion": "containerd://1.7.0",
                    "kernelVersion": "6.1.0",
                    "kubeProxyVersion": f"v{self.kube_version}.0",
                    "kubeletVersion": f"v{self.kube_version}.0",
                    "machineID": "",
                    "operatingSystem": "linux",
                    "osImage": "scanqueue sim",
                    "systemUUID": "",
                },
            },
        }
        return self.create(node, keep_status=True)

    # ------------------------------------------------------ images, reports

    def set_report(self, image_or_digest: str, report: bytes | str | Path) -> None:
        """A recorded report that a scan of that digest (or repository) prints instead of
        Trivy's own, once the real Trivy has pulled and scanned successfully; for tests whose
        point is a report's content. Without real pulls, it is all the scan does."""
        self.reports.set(image_or_digest, report)

    def set_advisories(self, advisories: trivydb.AdvisoryFile | str | Path) -> None:
        """The vulnerability DB of every scan from now on (an advisory file or its path)."""
        self.trivy.set_advisories(advisories)

    def trivy_server(self) -> str:
        """URL of this world's ``trivy server`` (started on first call) for ``--server``."""
        return self.trivy.start_server()

    def set_digest(self, image: str, digest: str) -> None:
        """The digest the kubelet reports for ``image`` when a pod does not pin one."""
        self.digests[image] = digest

    def digest_of(self, image: str) -> str:
        """Known digest of ``image``, else a stable made-up one (as if the node had pulled it)."""
        if image in self.digests:
            return self.digests[image]
        return "sha256:" + hashlib.sha256(image.encode()).hexdigest()

    # ---------------------------------------------------------------- tests

    def wait_for(
        self, predicate: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition"
    ) -> Any:
        """Poll ``predicate`` until it returns something truthy; else ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what} not reached within {timeout}s")
            time.sleep(0.02)
