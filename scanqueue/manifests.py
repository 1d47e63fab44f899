"""The scan Job and its credential Secret, for both scan modes, as camelCase dicts.

Why it exists: the manifest is where a credential could leak (a literal env
value is readable by anyone who can read the Pod) and where a scan could
outlive its purpose (no deadline, no TTL, a Secret without an owner). Keeping
it a pure function of a frozen ``ScanSpec`` makes both properties testable by
comparing dicts.

What it must never do: any I/O, or put a credential value anywhere but the
``data`` of the Secret built by ``scan_secret``. The Job only ever carries
``secretKeyRef`` references to that Secret.

The pod this module produces follows the "scan pod contract" that the
emulator's kubelet interprets (registry mode: container ``trivy`` running
``trivy image ... <name@digest>``; node mode: the target image itself on its
node, running a Trivy binary copied in by an init container).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from typing import Any, Literal, Protocol

from scanqueue import config, errors, trivy_env

Mode = Literal["registry", "node"]
CredentialKind = Literal["basic", "token"]

MANAGED_BY = "scanqueue"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_CLUSTER = "scanqueue.io/cluster"
LABEL_DIGEST = "scanqueue.io/digest"
LABEL_SCAN_ID = "scanqueue.io/scan-id"
LABEL_MODE = "scanqueue.io/mode"
ANNOTATION_IMAGE = "scanqueue.io/image"
ANNOTATION_ATTEMPT = "scanqueue.io/attempt"

CONTAINER = "trivy"  # the scan container's name, in both modes (the emulator looks for it)
INIT_CONTAINER = "copy-trivy"
WORK_DIR = "/var/scanqueue"  # emptyDir: the Trivy binary (node mode) and the DB cache
CACHE_DIR = f"{WORK_DIR}/cache"
CA_DIR = "/etc/scanqueue/ca"  # the cluster's ca_bundle_configmap, mounted read-only
CA_KEY = "ca.crt"  # the ConfigMap key holding the PEM bundle
TRIVY_IN_IMAGE = "/usr/local/bin/trivy"  # where the aquasec/trivy image keeps its binary
CA_BUNDLE_IN_IMAGE = "/etc/ssl/certs/ca-certificates.crt"  # and its CA bundle (Alpine)
CONFIG_DIR = "/var/scanqueue-config"  # node mode: our trivy.yaml and .trivyignore (downward API)
CONFIG_FILE = "trivy.yaml"
IGNORE_FILE = ".trivyignore"
ANNOTATION_CONFIG = "scanqueue.io/trivy-config"  # content of our trivy.yaml (node mode)
ANNOTATION_IGNORE = "scanqueue.io/trivy-ignore"  # content of our .trivyignore (node mode)
CONFIG_CONTENT = "{}\n"  # no setting: the command line and defaults decide everything
IGNORE_CONTENT = "# scanqueue ignores no finding\n"
NON_ROOT_UID = 10001  # the aquasec/trivy image declares no user; pick a fixed non-root one

# Secret keys; the Job refers to them by name only.
KEY_USERNAME = "username"
KEY_PASSWORD = "password"
KEY_TOKEN = "token"

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_NAME_HASH_CHARS = 16  # 64 bits of sha256(cluster, digest): no collision in any real farm


@dataclasses.dataclass(frozen=True)
class Resources:
    """Requests and limits of the scan container (Kubernetes quantities)."""

    cpu_request: str = "100m"  # CPU reserved for one scan
    memory_request: str = "256Mi"  # memory reserved for one scan
    cpu_limit: str = "1"  # CPU at most
    memory_limit: str = "2Gi"  # memory at most; a local Trivy DB needs ~1Gi
    ephemeral_storage_limit: str = "4Gi"  # scratch space at most (layers, DB)
    cache_size_limit: str = "3Gi"  # sizeLimit of the emptyDir holding the DB cache

    @classmethod
    def of(cls, cluster: config.ClusterSettings) -> Resources:
        """The requests and limits configured for ``cluster``'s scan pods."""
        return cls(
            cpu_request=cluster.scan_cpu_request,
            memory_request=cluster.scan_memory_request,
            cpu_limit=cluster.scan_cpu_limit,
            memory_limit=cluster.scan_memory_limit,
            ephemeral_storage_limit=cluster.scan_ephemeral_storage_limit,
        )


@dataclasses.dataclass(frozen=True)
class ScanSpec:
    """Everything one scan Job and its Secret are built from. Holds no credential value.

    ``image`` is the target's repository as a puller names it, without tag or
    digest ("127.0.0.1:5000/team/app", "docker.io/library/nginx"); the Job
    scans ``image@digest``. ``credential`` says which keys the scan Secret
    holds (``None``: anonymous pull, no Secret); node mode never has one and
    needs ``node_name``. Raises ``PermanentError`` naming the bad field.
    """

    cluster: config.ClusterSettings
    scan: config.ScanSettings
    image: str
    digest: str
    mode: Mode
    scan_id: str
    attempt: int
    credential: CredentialKind | None = None
    node_name: str | None = None
    resources: Resources | None = None  # None: the cluster's scan_* settings
    # Trivy's --list-all-pkgs: every package listed, for the SBOM rescans keep; only when
    # rescans are on (a third of a report's bytes, carried and decoded for nothing otherwise)
    list_packages: bool = False

    @property
    def sizing(self) -> Resources:
        """The scan container's requests and limits: ``resources``, else the cluster's."""
        return self.resources or Resources.of(self.cluster)

    def __post_init__(self) -> None:
        where = f"scan {self.scan_id!r} of {self.image}@{self.digest}"
        if not _DIGEST.match(self.digest):
            raise errors.PermanentError(f"{where}: digest must look like sha256:<64 hex>")
        if not self.image or "@" in self.image or self.image != self.image.strip():
            raise errors.PermanentError(f"{where}: image must be a repository name without digest")
        if not self.scan_id or not _LABEL_VALUE.match(self.scan_id):
            raise errors.PermanentError(
                f"{where}: scan id must be a label value (at most 63 of A-Z a-z 0-9 - _ .)"
            )
        if self.attempt < 0:
            raise errors.PermanentError(f"{where}: attempt must be 0 or more")
        if self.mode not in ("registry", "node"):
            raise errors.PermanentError(f"{where}: mode must be registry or node")
        if self.mode == "node":
            if not self.node_name:
                raise errors.PermanentError(f"{where}: node mode needs the node's name")
            if self.credential is not None:
                raise errors.PermanentError(f"{where}: node mode never uses a credential")
        elif self.node_name is not None:
            raise errors.PermanentError(f"{where}: registry mode is not pinned to a node")
        if self.scan.job_ttl_seconds <= self.scan.collect_interval_seconds:
            raise errors.PermanentError(
                f"{where}: scan.job_ttl_seconds must exceed scan.collect_interval_seconds, "
                "or the cluster deletes finished Jobs before they are collected"
            )
        if self.credential not in (None, "basic", "token"):
            raise errors.PermanentError(f"{where}: credential kind must be basic, token or None")

    @property
    def target(self) -> str:
        """The scanned image pinned by digest: ``name@sha256:...``."""
        return f"{self.image}@{self.digest}"

    @property
    def registry_host(self) -> str:
        """``host[:port]`` of the target image."""
        return self.image.split("/", 1)[0]

    @property
    def job_name(self) -> str:
        return job_name(self.cluster.name, self.digest, self.attempt)

    @property
    def secret_name(self) -> str:
        return secret_name(self.job_name)


class SecretValue(Protocol):
    """What ``scan_secret`` reads of a credential (``credentials.Credential`` fits)."""

    @property
    def username(self) -> str: ...
    @property
    def password(self) -> str: ...
    @property
    def token(self) -> str: ...


def job_name(cluster: str, digest: str, attempt: int) -> str:
    """Return the scan Job's name: ``sq-<16 hex of sha256(cluster, digest)>-<attempt>``.

    Deterministic, so a redelivered task finds the Job it already created; a
    DNS-1123 label of at most 63 characters, so the ``job-name`` label fits.
    """
    if attempt < 0:
        raise errors.PermanentError(f"scan attempt {attempt} of {digest}: must be 0 or more")
    digest_hash = hashlib.sha256(f"{cluster}\0{digest}".encode()).hexdigest()
    name = f"sq-{digest_hash[:_NAME_HASH_CHARS]}-{attempt}"
    if len(name) > 63:
        raise errors.PermanentError(f"scan attempt {attempt} of {digest}: attempt too large")
    return name


def secret_name(job: str) -> str:
    """Return the name of the credential Secret of the Job called ``job``."""
    return f"{job}-cred"


def digest_label(digest: str) -> str:
    """Return the ``scanqueue.io/digest`` label value: the first 63 hex chars of the digest."""
    return digest.partition(":")[2][:63]


def cluster_selector(cluster: str) -> str:
    """Return the label selector matching every scan Job and Secret of ``cluster``."""
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_CLUSTER}={cluster}"


def scan_labels(spec: ScanSpec) -> dict[str, str]:
    """Return the labels shared by the Job, its pod template and the Secret."""
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_CLUSTER: spec.cluster.name,
        LABEL_DIGEST: digest_label(spec.digest),
        LABEL_SCAN_ID: spec.scan_id,
        LABEL_MODE: spec.mode,
    }


def scan_annotations(spec: ScanSpec) -> dict[str, str]:
    """Return the annotations of the Job, its pod template and the Secret."""
    return {ANNOTATION_IMAGE: spec.target, ANNOTATION_ATTEMPT: str(spec.attempt)}


def _pod_annotations(spec: ScanSpec) -> dict[str, str]:
    annotations = scan_annotations(spec)
    if spec.mode == "node":  # read by the downward API volume of _config_volume
        annotations[ANNOTATION_CONFIG] = CONFIG_CONTENT
        annotations[ANNOTATION_IGNORE] = IGNORE_CONTENT
    return annotations


def trivy_timeout_seconds(scan: config.ScanSettings) -> int:
    """Trivy's own ``--timeout``: shorter than the Job deadline, so Trivy says why it stopped."""
    deadline = scan.job_deadline_seconds
    return max(deadline - 30, deadline // 2, 1)


def scan_job(spec: ScanSpec) -> dict[str, Any]:
    """Return the scan Job (``batch/v1``), created suspended, for ``spec``.

    Registry mode runs ``trivy image`` on ``spec.target`` with the credential
    from the Secret ``spec.secret_name`` (``secretKeyRef`` only); node mode
    runs the target image itself on ``spec.node_name``. The Job carries no
    credential value.
    """
    pod_spec = _registry_pod(spec) if spec.mode == "registry" else _node_pod(spec)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": spec.job_name,
            "namespace": spec.cluster.scan_namespace,
            "labels": scan_labels(spec),
            "annotations": scan_annotations(spec),
        },
        "spec": {
            "suspend": True,
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": spec.scan.job_deadline_seconds,
            "ttlSecondsAfterFinished": spec.scan.job_ttl_seconds,
            "template": {
                "metadata": {"labels": scan_labels(spec), "annotations": _pod_annotations(spec)},
                "spec": pod_spec,
            },
        },
    }


def scan_secret(spec: ScanSpec, *, job_uid: str, credential: SecretValue) -> dict[str, Any]:
    """Return the Secret holding the one credential of ``spec``, owned by the Job ``job_uid``.

    Opaque and immutable; keys ``username``/``password`` or ``token`` as
    ``spec.credential`` says. Raises ``PermanentError`` when ``spec`` has no
    credential or ``credential`` lacks what its kind needs (the message names
    the scan, never a value).
    """
    where = f"scan secret {spec.cluster.scan_namespace}/{spec.secret_name} for {spec.target}"
    if not job_uid:
        raise errors.PermanentError(f"{where}: the owning Job's uid is needed")
    if spec.credential == "basic":
        if not credential.username or not credential.password:
            raise errors.PermanentError(f"{where}: basic credential needs username and password")
        values = {KEY_USERNAME: credential.username, KEY_PASSWORD: credential.password}
    elif spec.credential == "token":
        if not credential.token:
            raise errors.PermanentError(f"{where}: token credential has no token")
        values = {KEY_TOKEN: credential.token}
    else:
        raise errors.PermanentError(f"{where}: this scan pulls anonymously, it has no secret")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "immutable": True,
        "metadata": {
            "name": spec.secret_name,
            "namespace": spec.cluster.scan_namespace,
            "labels": scan_labels(spec),
            "annotations": scan_annotations(spec),
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": spec.job_name,
                    "uid": job_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {k: base64.b64encode(v.encode()).decode("ascii") for k, v in values.items()},
    }


def _common_pod() -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 10,
    }


def _resources(spec: ScanSpec) -> dict[str, Any]:
    r = spec.sizing
    return {
        "requests": {"cpu": r.cpu_request, "memory": r.memory_request},
        "limits": {
            "cpu": r.cpu_limit,
            "memory": r.memory_limit,
            "ephemeral-storage": r.ephemeral_storage_limit,
        },
    }


def _volumes(spec: ScanSpec) -> list[dict[str, Any]]:
    return [
        {"name": "work", "emptyDir": {"sizeLimit": spec.sizing.cache_size_limit}},
        {"name": "tmp", "emptyDir": {}},
        *_ca_volumes(spec),
    ]


def _ca_volumes(spec: ScanSpec) -> list[dict[str, Any]]:
    """The CA bundle ConfigMap of registries with an internal CA, when the cluster names one."""
    if not spec.cluster.ca_bundle_configmap:
        return []
    items = [{"key": CA_KEY, "path": CA_KEY}]
    source = {"name": spec.cluster.ca_bundle_configmap, "items": items, "optional": False}
    return [{"name": "ca", "configMap": source}]


def _mounts(spec: ScanSpec | None = None) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "work", "mountPath": WORK_DIR},
        {"name": "tmp", "mountPath": "/tmp"},  # an emptyDir of its own
    ]
    if spec is not None and spec.cluster.ca_bundle_configmap:
        mounts.append({"name": "ca", "mountPath": CA_DIR, "readOnly": True})
    return mounts


def _trivy_options(spec: ScanSpec) -> list[str]:
    options = ["--format", "json", "--quiet", "--scanners", "vuln"]
    if spec.list_packages:  # the report lists every package, kept as the digest's SBOM
        options.append("--list-all-pkgs")
    options += ["--timeout", f"{trivy_timeout_seconds(spec.scan)}s"]
    options += ["--cache-dir", CACHE_DIR]
    if spec.cluster.trivy_server:
        options += ["--server", spec.cluster.trivy_server]
    if spec.cluster.ca_bundle_configmap:
        # Trivy >= 0.76 adds these CAs to the system ones for every HTTPS request it makes
        # (registry, DB repositories, server); SSL_CERT_FILE would replace the system CAs.
        options += ["--cacert", f"{CA_DIR}/{CA_KEY}"]
    if spec.cluster.java_db_repository:
        options += ["--java-db-repository", spec.cluster.java_db_repository]
    if spec.cluster.trivy_db_repository and not spec.cluster.trivy_server:
        # a standalone scan downloads the DB from there (a server holds its own)
        options += ["--db-repository", spec.cluster.trivy_db_repository]
    return options


def _registry_env(spec: ScanSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []

    def ref(variable: str, key: str) -> dict[str, Any]:
        selector = {"name": spec.secret_name, "key": key, "optional": False}
        return {"name": variable, "valueFrom": {"secretKeyRef": selector}}

    if spec.credential == "basic":
        env += [ref("TRIVY_USERNAME", KEY_USERNAME), ref("TRIVY_PASSWORD", KEY_PASSWORD)]
    elif spec.credential == "token":
        env.append(ref("TRIVY_REGISTRY_TOKEN", KEY_TOKEN))
    env += _server_token_env(spec)
    if spec.registry_host in spec.scan.insecure_registries:
        # plain http (or an untrusted certificate); Trivy 0.76 has no TRIVY_NON_SSL
        env.append({"name": "TRIVY_INSECURE", "value": "true"})
    return env


def _registry_pod(spec: ScanSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.cluster.trivy_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["trivy"],
        "args": ["image", *_trivy_options(spec), spec.target],
        "resources": _resources(spec),
        "volumeMounts": _mounts(spec),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NON_ROOT_UID,
            "runAsGroup": NON_ROOT_UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    env = _registry_env(spec)
    if env:
        container["env"] = env
    return {
        **_common_pod(),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NON_ROOT_UID,
            "runAsGroup": NON_ROOT_UID,
            "fsGroup": NON_ROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": _volumes(spec),
    }


def _node_pod(spec: ScanSpec) -> dict[str, Any]:
    copy = {
        "name": INIT_CONTAINER,
        "image": spec.cluster.trivy_image,
        "imagePullPolicy": "IfNotPresent",
        # our binary and our CA bundle: the target image's /etc/ssl must not decide whom
        # Trivy trusts when it fetches its DB or talks to the Trivy server
        "command": ["cp", TRIVY_IN_IMAGE, CA_BUNDLE_IN_IMAGE, f"{WORK_DIR}/"],
        "resources": _resources(spec),
        "volumeMounts": _mounts(),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NON_ROOT_UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    mounted = [WORK_DIR, CONFIG_DIR] + ([CA_DIR] if spec.cluster.ca_bundle_configmap else [])
    skip = ["--skip-dirs", ",".join([*mounted, "/proc", "/sys", "/dev"])]  # ours, not the image's
    ours = [
        "--config",
        f"{CONFIG_DIR}/{CONFIG_FILE}",
        "--ignorefile",
        f"{CONFIG_DIR}/{IGNORE_FILE}",
    ]
    scan = {
        "name": CONTAINER,
        "image": spec.target,
        "imagePullPolicy": "Never",
        "command": [f"{WORK_DIR}/trivy"],
        "args": ["rootfs", *_trivy_options(spec), *ours, *skip, "/"],
        # The image is the scanned party: its WORKDIR (trivy.yaml, .trivyignore) and its
        # ENV (TRIVY_*, proxies, CA paths) must not reach Trivy. Ours replace both.
        "workingDir": WORK_DIR,
        "env": node_env(spec),
        "resources": _resources(spec),
        "volumeMounts": [*_mounts(spec), {"name": "trivy-config", "mountPath": CONFIG_DIR}],
        # Root reads every file of the image (DAC_OVERRIDE, which the "baseline" Pod Security
        # level allows); it needs no other power. hostUsers: false maps it to an
        # unprivileged user of the node where the cluster supports user namespaces.
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": ["DAC_OVERRIDE"]},
        },
    }
    pod: dict[str, Any] = {
        **_common_pod(),
        "nodeName": spec.node_name,
        # nodeName bypasses the scheduler, so only NoExecute taints matter: tolerate them
        # for no longer than the scan may last anyway, never forever.
        "tolerations": [
            {
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": spec.scan.job_deadline_seconds,
            }
        ],
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [copy],
        "containers": [scan],
        "volumes": [*_volumes(spec), _config_volume()],
    }
    if spec.cluster.scan_user_namespaces:
        pod["hostUsers"] = False
    return pod


def node_env(spec: ScanSpec) -> list[dict[str, Any]]:
    """The node-mode scan container's env: every variable Trivy (or Go) would take from
    the image, set by us; empty means "unset" to Trivy and to Go's proxy and TLS code."""
    ours = {
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "XDG_CACHE_HOME": "/tmp/.cache",
        "XDG_CONFIG_HOME": "/tmp/.config",
        "XDG_DATA_HOME": "/tmp/.local/share",
        "SSL_CERT_FILE": f"{WORK_DIR}/{CA_BUNDLE_IN_IMAGE.rsplit('/', 1)[1]}",
        "SSL_CERT_DIR": f"{WORK_DIR}/no-ca-dir",  # absent: only SSL_CERT_FILE is trusted
    }
    env: dict[str, dict[str, Any]] = {}
    for name in (*trivy_env.IMAGE_ENV_OVERRIDDEN, *trivy_env.TRIVY_ENV_BLANKED):
        env[name] = {"name": name, "value": ours.get(name, "")}
    for variable in _server_token_env(spec):
        env[variable["name"]] = variable
    return list(env.values())


def _config_volume() -> dict[str, Any]:
    """trivy.yaml and .trivyignore as files we write: pod annotations via the downward API."""
    items = [
        {"path": CONFIG_FILE, "fieldRef": {"fieldPath": _annotation_path(ANNOTATION_CONFIG)}},
        {"path": IGNORE_FILE, "fieldRef": {"fieldPath": _annotation_path(ANNOTATION_IGNORE)}},
    ]
    return {"name": "trivy-config", "downwardAPI": {"items": items}}


def _annotation_path(key: str) -> str:
    return f"metadata.annotations['{key}']"


def _server_token_env(spec: ScanSpec) -> list[dict[str, Any]]:
    secret = spec.cluster.trivy_server_token_secret
    if not spec.cluster.trivy_server or not secret:
        return []
    selector = {"name": secret, "key": KEY_TOKEN, "optional": False}
    return [{"name": "TRIVY_TOKEN", "valueFrom": {"secretKeyRef": selector}}]
