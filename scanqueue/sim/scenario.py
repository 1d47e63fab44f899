"""Scenarios: a YAML file that declares a whole cluster for the emulator.

A scenario lists nodes, namespaces, secrets (pull secrets included), service
accounts, workloads (Deployment -> ReplicaSet -> Pods, StatefulSet,
DaemonSet, CronJob -> Job -> Pod, Job, bare Pod) with the node each pod runs
on, raw ``objects``, and ``reports``: image or digest -> recorded Trivy report
file (relative to the scenario file). ``${VAR}`` and ``${VAR:-default}``
placeholders are filled from the variables given at load, so the demo can
point pull secrets and images at the registry it just started.

Every running container gets ``status.containerStatuses[].imageID`` with a
real digest: the ``imageID``/``digest`` written in the scenario, else the
``digests`` map given at load, else the digest pinned in the image, else the
digest the registry reports (``skopeo inspect`` with the pod's pull secret),
else a stable made-up one (listed in ``Applied.unresolved``).

Everything goes through the emulator's own create path, so a scenario is
validated like any other client's objects.

The format (``data/demo.yaml`` is a complete example)::

    nodes: [node-1, {name: node-2, labels: {zone: b}}]
    namespaces: [team-a, {name: scans, labels: {...}}]
    secrets:                      # type/data/stringData as in a Secret, or:
      - {namespace: team-a, name: regcred,
         dockerconfigjson: {registry: HOST, username: U, password: P}}  # or a list;
                                  # dockercfg: the same, legacy .dockercfg format
    serviceAccounts:
      - {namespace: team-a, name: builder, imagePullSecrets: [regcred]}
    workloads:
      - kind: Deployment          # Deployment | StatefulSet | DaemonSet | CronJob | Job | Pod
        namespace: team-a
        name: web
        replicas: 2               # not for DaemonSet (one pod per node) or Job/CronJob/Pod
        nodes: [node-1]           # or node: node-1; default: every node, round robin
        imagePullSecrets: [regcred]
        serviceAccount: builder
        labels: {tier: front}     # app=<name> is always set
        schedule: "0 2 * * *"     # CronJob only
        initContainers: [...]     # like containers
        containers:
          - {name: web, image: HOST/team-a/web:1.0, imageID: sha256:...}  # imageID optional
    objects: [<any manifest the emulator serves>]
    reports: {HOST/team-a/web: reports/node-alpine-3.19.json, "sha256:...": FILE}
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from importlib import resources as importlib_resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from scanqueue import errors
from scanqueue.sim import apierrors, kubelet, podkubelet
from scanqueue.sim import cluster as cluster_mod

if TYPE_CHECKING:
    from scanqueue.sim import emulator as emulator_mod

Obj = dict[str, Any]
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_KNOWN_KEYS = {
    "nodes",
    "namespaces",
    "secrets",
    "serviceAccounts",
    "workloads",
    "objects",
    "reports",
    "description",
}
_WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job", "Pod"}


class ScenarioError(errors.PermanentError):
    """The scenario file is unreadable or invalid; the message names the entry and the fix."""


def demo_path() -> Path:
    """The demo scenario shipped with the package."""
    return Path(str(importlib_resources.files("scanqueue.sim").joinpath("data/demo.yaml")))


@dataclasses.dataclass(frozen=True)
class Scenario:
    source: str  # file name, for messages
    base: Path  # directory report paths are relative to
    doc: Mapping[str, Any]


@dataclasses.dataclass
class Applied:
    pods: list[str] = dataclasses.field(default_factory=list)  # "namespace/name"
    digests: dict[str, str] = dataclasses.field(default_factory=dict)  # image -> digest used
    unresolved: list[str] = dataclasses.field(default_factory=list)  # images given made-up digests


def _substitute(value: Any, variables: Mapping[str, str], source: str) -> Any:
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in variables:
                return str(variables[name])
            if default is not None:
                return default
            raise ScenarioError(
                f"{source}: variable ${{{name}}} has no value; pass it at load "
                f"(--var {name}=...) or write ${{{name}:-default}}"
            )

        return _VAR.sub(one, value)
    if isinstance(value, list):
        return [_substitute(v, variables, source) for v in value]
    if isinstance(value, dict):
        return {
            _substitute(k, variables, source): _substitute(v, variables, source)
            for k, v in value.items()
        }
    return value


def load(
    path: str | Path | None = None,
    *,
    text: str | None = None,
    variables: Mapping[str, str] | None = None,
) -> Scenario:
    """Read and check a scenario (the demo when neither ``path`` nor ``text`` is given)."""
    if text is None:
        file = Path(path) if path is not None else demo_path()
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as e:
            raise ScenarioError(f"cannot read scenario {file}: {e.strerror}") from e
        source, base = str(file), file.parent
    else:
        source, base = "<scenario>", Path(path) if path is not None else Path.cwd()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ScenarioError(f"{source} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping of sections")
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        raise ScenarioError(
            f"{source}: unknown section(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_KNOWN_KEYS))}"
        )
    doc = _substitute(raw, variables or {}, source)
    for i, workload in enumerate(doc.get("workloads") or []):
        kind = workload.get("kind") if isinstance(workload, dict) else None
        if kind not in _WORKLOAD_KINDS:
            raise ScenarioError(
                f"{source}: workloads[{i}] has kind {kind!r}; "
                f"expected one of {', '.join(sorted(_WORKLOAD_KINDS))}"
            )
        for field in ("name", "namespace", "containers"):
            if not workload.get(field):
                raise ScenarioError(f"{source}: workloads[{i}] ({kind}) needs {field!r}")
    return Scenario(source, base, doc)


# ---------------------------------------------------------------------- apply


def _named(entry: Any) -> Obj:
    return {"name": entry} if isinstance(entry, str) else dict(entry)


def _pull_secret(entry: Mapping[str, Any]) -> Obj:
    secret: Obj = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": entry["name"], "namespace": entry["namespace"]},
    }
    if entry.get("labels"):
        secret["metadata"]["labels"] = dict(entry["labels"])
    for key in ("type", "data", "stringData", "immutable"):
        if key in entry:
            secret[key] = entry[key]
    registries = entry.get("dockerconfigjson") or entry.get("dockercfg")
    if registries is not None:
        auths: Obj = {}
        items = registries if isinstance(registries, list) else [registries]
        for item in items:
            user, password = str(item.get("username", "")), str(item.get("password", ""))
            auth = base64.b64encode(f"{user}:{password}".encode()).decode()
            auths[str(item["registry"])] = {"username": user, "password": password, "auth": auth}
        if entry.get("dockerconfigjson") is not None:
            secret["type"] = "kubernetes.io/dockerconfigjson"
            secret["stringData"] = {".dockerconfigjson": json.dumps({"auths": auths})}
        else:
            secret["type"] = "kubernetes.io/dockercfg"
            secret["stringData"] = {".dockercfg": json.dumps(auths)}
    return secret


def _short_hash(*parts: str, length: int = 10) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return "".join(alphabet[b % len(alphabet)] for b in digest[:length])


class _Applier:
    def __init__(
        self,
        emulator: emulator_mod.Emulator,
        scenario: Scenario,
        digests: Mapping[str, str],
        resolve: bool,
    ) -> None:
        self.emulator = emulator
        self.scenario = scenario
        self.digests = dict(digests)
        self.resolve = resolve
        self.applied = Applied()
        self.node_names: list[str] = []
        self._turn = 0

    def fail(self, what: str, error: Exception) -> ScenarioError:
        detail = error.message if isinstance(error, apierrors.ApiError) else str(error)
        return ScenarioError(f"{self.scenario.source}: {what}: {detail}")

    def create(self, obj: Obj, what: str, *, keep_status: bool = False) -> Obj:
        try:
            return self.emulator.create(obj, keep_status=keep_status)
        except (apierrors.ApiError, KeyError) as e:
            raise self.fail(what, e) from e

    # ------------------------------------------------------------- digests

    def _credentials(
        self, namespace: str, secret_names: Sequence[str], host: str
    ) -> list[tuple[str, str]]:
        """Every (user, password) the pod's pull secrets hold for ``host``, in the kubelet's
        order (secret by secret); an anonymous pull comes last."""
        found: list[tuple[str, str]] = []
        for name in secret_names:
            secret = self.emulator.get("Secret", namespace, name)
            if secret is None:
                continue
            data = secret.get("data") or {}
            raw = data.get(".dockerconfigjson") or data.get(".dockercfg")
            if raw is None:
                continue
            try:
                parsed = json.loads(base64.b64decode(raw))
            except ValueError:
                continue
            auths = parsed.get("auths", parsed) if isinstance(parsed, dict) else {}
            for key, entry in auths.items():
                key_host = re.sub(r"^https?://", "", str(key)).split("/", 1)[0]
                if key_host == host and isinstance(entry, dict):
                    if entry.get("auth"):
                        user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                        found.append((user, password))
                    else:
                        found.append(
                            (str(entry.get("username", "")), str(entry.get("password", "")))
                        )
        return [*found, ("", "")]

    def digest(self, image: str, given: str | None, namespace: str, secrets: Sequence[str]) -> str:
        if given:
            found = kubelet.DIGEST.search(given)
            if found is None:
                raise ScenarioError(
                    f"{self.scenario.source}: imageID {given!r} has no sha256 digest"
                )
            return found.group(0)
        if image in self.digests:
            return self.digests[image]
        pinned = kubelet.split_image(image)[3]
        if pinned:
            return pinned
        digest = None
        if self.resolve:
            host = kubelet.split_image(image)[0]
            for user, password in self._credentials(namespace, secrets, host):
                digest = kubelet.resolve_digest(
                    image, username=user, password=password, insecure=kubelet.plain_http(host)
                )
                if digest is not None:
                    break
            node_login = self.emulator.trivy.node_auth.get(host)
            if digest is None and node_login is not None:  # the nodes' own registry login
                digest = kubelet.resolve_digest(
                    image, username=node_login[0], password=node_login[1],
                    insecure=kubelet.plain_http(host),
                )  # fmt: skip
        if digest is None:
            digest = self.emulator.digest_of(image)
            self.applied.unresolved.append(image)
        self.digests[image] = digest
        return digest

    # ------------------------------------------------------------------ pods

    def _pod_secrets(self, namespace: str, workload: Mapping[str, Any]) -> list[str]:
        names = [_named(s)["name"] for s in workload.get("imagePullSecrets") or []]
        if names:
            return names
        account = self.emulator.get(
            "ServiceAccount", namespace, workload.get("serviceAccount") or "default"
        )
        return [s.get("name", "") for s in (account or {}).get("imagePullSecrets") or []]

    def template(self, workload: Mapping[str, Any], labels: Mapping[str, str]) -> Obj:
        spec: Obj = {
            "containers": [self._container(c) for c in workload["containers"]],
        }
        if workload.get("initContainers"):
            spec["initContainers"] = [self._container(c) for c in workload["initContainers"]]
        if workload.get("imagePullSecrets"):
            spec["imagePullSecrets"] = [
                {"name": _named(s)["name"]} for s in workload["imagePullSecrets"]
            ]
        if workload.get("serviceAccount"):
            spec["serviceAccountName"] = workload["serviceAccount"]
        return {"metadata": {"labels": dict(labels)}, "spec": spec}

    @staticmethod
    def _container(entry: Mapping[str, Any]) -> Obj:
        out: Obj = {"name": entry["name"], "image": entry["image"]}
        for key in ("command", "args", "env", "imagePullPolicy", "ports"):
            if key in entry:
                out[key] = entry[key]
        return out

    def next_node(self, workload: Mapping[str, Any]) -> str:
        nodes = workload.get("nodes") or (
            [workload["node"]] if workload.get("node") else self.node_names
        )
        if not nodes:
            raise ScenarioError(f"{self.scenario.source}: {workload['name']} has no node to run on")
        node = str(nodes[self._turn % len(nodes)])
        self._turn += 1
        return node

    # shape: one pod as the workload's controller and the kubelet would leave it (metadata,
    # owner, spec, then a status per container); the builders per kind call it
    def pod(
        self,
        workload: Mapping[str, Any],
        name: str,
        template: Obj,
        *,
        owner: Obj | None,
        node: str,
        extra_labels: Mapping[str, str] | None = None,
    ) -> Obj:
        namespace = workload["namespace"]
        meta: Obj = {
            "name": name,
            "namespace": namespace,
            "labels": {**template["metadata"]["labels"], **(extra_labels or {})},
        }
        if owner is not None:
            meta["ownerReferences"] = [self._ref(owner)]
        spec = {**template["spec"], "nodeName": node}
        body: Obj = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
        secrets = self._pod_secrets(namespace, workload)
        stamp = cluster_mod.now_text()
        statuses: list[Obj] = []
        init_statuses: list[Obj] = []
        by_name = {
            c["name"]: c for c in [*workload["containers"], *(workload.get("initContainers") or [])]
        }
        for group, out in (("initContainers", init_statuses), ("containers", statuses)):
            for container in spec.get(group) or []:
                entry = by_name[container["name"]]
                digest = self.digest(
                    container["image"],
                    entry.get("imageID") or entry.get("digest"),
                    namespace,
                    secrets,
                )
                self.applied.digests[container["image"]] = digest
                state: Obj
                if group == "initContainers":
                    state = {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": stamp,
                            "finishedAt": stamp,
                        }
                    }
                else:
                    state = {"running": {"startedAt": stamp}}
                out.append(
                    {
                        "name": container["name"],
                        "state": state,
                        "lastState": {},
                        "ready": group == "containers",
                        "restartCount": 0,
                        "image": container["image"],
                        "imageID": str(entry.get("imageID") or "")
                        if str(entry.get("imageID") or "").count("@")
                        else podkubelet.image_id(container["image"], digest),
                        "containerID": "containerd://"
                        + _short_hash(namespace, name, container["name"], length=32),
                        "started": group == "containers",
                    }
                )
        conditions = [
            {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": stamp}
            for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
        ]
        body["status"] = {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": "10.0.0.1",
            "podIP": f"10.244.{self._turn % 250}.{len(self.applied.pods) % 250 + 2}",
            "startTime": stamp,
            "containerStatuses": statuses,
            "qosClass": "BestEffort",
        }
        if init_statuses:
            body["status"]["initContainerStatuses"] = init_statuses
        created = self.create(body, f"pod {namespace}/{name}", keep_status=True)
        self.applied.pods.append(f"{namespace}/{name}")
        return created

    # ------------------------------------------------------------- workloads

    def workload(self, workload: Mapping[str, Any]) -> None:
        kind, name, namespace = workload["kind"], workload["name"], workload["namespace"]
        labels = {"app": name, **(workload.get("labels") or {})}
        template = self.template(workload, labels)
        selector = {"matchLabels": {"app": name}}
        replicas = int(workload.get("replicas", 1))
        meta = {"name": name, "namespace": namespace, "labels": labels}
        what = f"{kind} {namespace}/{name}"
        if kind == "Pod":
            self.pod(workload, name, template, owner=None, node=self.next_node(workload))
        elif kind == "Deployment":
            hash_ = _short_hash(namespace, name, json.dumps(template, sort_keys=True))
            status = {"replicas": replicas, "readyReplicas": replicas,
                      "availableReplicas": replicas, "updatedReplicas": replicas,
                      "observedGeneration": 1}  # fmt: skip
            deploy = self.create(
                {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                 "spec": {"replicas": replicas, "selector": selector, "template": template},
                 "status": status}, what, keep_status=True,
            )  # fmt: skip
            rs_template = {
                "metadata": {"labels": {**labels, "pod-template-hash": hash_}},
                "spec": template["spec"],
            }
            rs_meta = {
                "name": f"{name}-{hash_}",
                "namespace": namespace,
                "labels": rs_template["metadata"]["labels"],
                "ownerReferences": [self._ref(deploy)],
            }
            rs = self.create(
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": rs_meta,
                 "spec": {"replicas": replicas,
                          "selector": {"matchLabels": {"app": name, "pod-template-hash": hash_}},
                          "template": rs_template},
                 "status": {"replicas": replicas, "readyReplicas": replicas,
                            "availableReplicas": replicas, "observedGeneration": 1}},
                f"ReplicaSet of {what}", keep_status=True,
            )  # fmt: skip
            for i in range(replicas):
                pod_name = f"{rs_meta['name']}-{_short_hash(rs_meta['name'], str(i), length=5)}"
                self.pod(workload, pod_name, rs_template, owner=rs, node=self.next_node(workload))
        elif kind == "StatefulSet":
            revision = f"{name}-{_short_hash(namespace, name, length=10)}"
            sts = self.create(
                {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta,
                 "spec": {"replicas": replicas, "selector": selector, "serviceName": name,
                          "template": template},
                 "status": {"replicas": replicas, "readyReplicas": replicas,
                            "currentReplicas": replicas, "currentRevision": revision,
                            "updateRevision": revision, "availableReplicas": replicas}},
                what, keep_status=True,
            )  # fmt: skip
            for i in range(replicas):
                extra = {"controller-revision-hash": revision,
                         "statefulset.kubernetes.io/pod-name": f"{name}-{i}",
                         "apps.kubernetes.io/pod-index": str(i)}  # fmt: skip
                self.pod(
                    workload,
                    f"{name}-{i}",
                    template,
                    owner=sts,
                    node=self.next_node(workload),
                    extra_labels=extra,
                )
        elif kind == "DaemonSet":
            nodes = [str(n) for n in workload.get("nodes") or self.node_names]
            ds = self.create(
                {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta,
                 "spec": {"selector": selector, "template": template},
                 "status": {"currentNumberScheduled": len(nodes),
                            "desiredNumberScheduled": len(nodes), "numberMisscheduled": 0,
                            "numberReady": len(nodes), "numberAvailable": len(nodes)}},
                what, keep_status=True,
            )  # fmt: skip
            for node in nodes:
                pod_name = f"{name}-{_short_hash(name, node, length=5)}"
                self.pod(workload, pod_name, template, owner=ds, node=node)
        elif kind in ("CronJob", "Job"):
            self._job(workload, template, meta, what)

    def _job(self, workload: Mapping[str, Any], template: Obj, meta: Obj, what: str) -> None:
        kind, name, namespace = workload["kind"], workload["name"], workload["namespace"]
        job_template = {"metadata": {"labels": dict(template["metadata"]["labels"])},
                        "spec": {**template["spec"], "restartPolicy": "OnFailure"}}  # fmt: skip
        owner = None
        job_name = name
        if kind == "CronJob":
            owner = self.create(
                {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta,
                 "spec": {"schedule": workload.get("schedule", "*/30 * * * *"),
                          "jobTemplate": {"spec": {"template": job_template}}}},
                what,
            )  # fmt: skip
            job_name = (
                f"{name}-{29000000 + int(_short_hash(name, length=4).encode().hex(), 16) % 99999}"
            )
        job_meta: Obj = {"name": job_name, "namespace": namespace, "labels": dict(meta["labels"])}
        if owner is not None:
            job_meta["ownerReferences"] = [self._ref(owner)]
        job = self.create(
            {"apiVersion": "batch/v1", "kind": "Job", "metadata": job_meta,
             "spec": {"backoffLimit": 6, "template": job_template}},
            f"Job of {what}",
        )  # fmt: skip
        stored_template = job["spec"]["template"]
        pod_name = f"{job_name}-{_short_hash(job_name, length=5)}"
        self.pod(workload, pod_name, stored_template, owner=job, node=self.next_node(workload))

    @staticmethod
    def _ref(owner: Obj) -> Obj:
        return {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }

    # ------------------------------------------------------------------ all

    def apply(self) -> Applied:
        doc = self.scenario.doc
        existing = {n["metadata"]["name"] for n in self.emulator.list("Node")}
        for entry in doc.get("nodes") or []:
            node = _named(entry)
            if node["name"] not in existing:
                self.emulator.add_node(node["name"], labels=node.get("labels"))
        self.node_names = sorted(n["metadata"]["name"] for n in self.emulator.list("Node"))
        for entry in doc.get("namespaces") or []:
            ns = _named(entry)
            if self.emulator.get("Namespace", None, ns["name"]) is None:
                ns_body: Obj = {"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": ns["name"],
                                     "labels": ns.get("labels") or {}}}  # fmt: skip
                self.create(ns_body, f"namespace {ns['name']}")
        for entry in doc.get("secrets") or []:
            self.create(_pull_secret(entry), f"secret {entry.get('namespace')}/{entry.get('name')}")
        for entry in doc.get("serviceAccounts") or []:
            name, namespace = entry["name"], entry["namespace"]
            pull = [{"name": _named(s)["name"]} for s in entry.get("imagePullSecrets") or []]
            sa_body: Obj = {"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": name, "namespace": namespace}}  # fmt: skip
            if pull:
                sa_body["imagePullSecrets"] = pull
            if self.emulator.get("ServiceAccount", namespace, name) is not None:
                current = self.emulator.get("ServiceAccount", namespace, name) or {}
                current["imagePullSecrets"] = pull
                self.emulator.replace(current)
            else:
                self.create(sa_body, f"service account {namespace}/{name}")
        for obj in doc.get("objects") or []:
            self.create(
                dict(obj), f"object {obj.get('kind')} {obj.get('metadata', {}).get('name')}"
            )
        for workload in doc.get("workloads") or []:
            self.workload(workload)
        for image, report in (doc.get("reports") or {}).items():
            path = Path(report)
            if not path.is_absolute():
                path = self.scenario.base / path
            if not path.is_file():
                raise ScenarioError(
                    f"{self.scenario.source}: report file {path} for {image} not found"
                )
            self.emulator.set_report(str(image), path)
        return self.applied


def apply(
    emulator: emulator_mod.Emulator,
    scenario: Scenario,
    *,
    digests: Mapping[str, str] | None = None,
    resolve: bool = True,
) -> Applied:
    """Create the scenario's objects in ``emulator``; raise ``ScenarioError`` naming the bad entry.

    ``digests`` maps image references to digests (the demo passes what it pushed);
    ``resolve`` asks the registry for the digests still unknown.
    """
    applier = _Applier(emulator, scenario, digests or {}, resolve)
    # hold the cluster still while a workload's objects are created, so that the
    # Job controller sees a scenario Job only once its pod exists
    with emulator.cluster.lock:
        return applier.apply()
