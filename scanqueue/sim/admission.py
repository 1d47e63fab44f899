"""What kube-apiserver does to an object between decoding and storage, besides the schema.

Defaulting (pod and Job defaults, the Job's generated selector and labels),
admission (the ServiceAccount plug-in: ``default`` service account, its
imagePullSecrets copied into a pod that lists none) and the semantic
validation the OpenAPI schema cannot express (names, label syntax, secret
types, immutable fields, a Job's restartPolicy). Functions mutate the dict
they are given (a private copy) and return ``Problem`` rows; they never
touch the store. Messages never include a secret's content.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from scanqueue.sim import resources, validation

Problem = validation.Problem

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
MAX_SECRET_BYTES = 1024 * 1024

SECRET_REQUIRED_KEYS = {
    "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
    "kubernetes.io/dockercfg": (".dockercfg",),
    "kubernetes.io/ssh-auth": ("ssh-privatekey",),
    "kubernetes.io/tls": ("tls.crt", "tls.key"),
}


def _invalid(field: str, value: Any, detail: str) -> Problem:
    shown = json.dumps(value) if not isinstance(value, str) else f'"{value}"'
    return Problem(field, "FieldValueInvalid", f"Invalid value: {shown}: {detail}", 422)


def _name_problems(field: str, name: str, *, label: bool) -> list[Problem]:
    limit = 63 if label else 253
    pattern = _DNS_LABEL if label else _DNS_SUBDOMAIN
    kind = "RFC 1123 label" if label else "RFC 1123 subdomain"
    if len(name) > limit:
        return [_invalid(field, name, f"must be no more than {limit} characters")]
    if not pattern.match(name):
        return [
            _invalid(
                field,
                name,
                f"a lowercase {kind} must consist of lower case alphanumeric characters, "
                "'-' or '.', and must start and end with an alphanumeric character",
            )
        ]
    return []


def _qualified_name_problems(field: str, key: str) -> list[Problem]:
    prefix, _, name = key.rpartition("/")
    out: list[Problem] = []
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        out.append(_invalid(field, key, "prefix part must be a lowercase RFC 1123 subdomain"))
    if not name or len(name) > 63 or not _QUALIFIED.match(name):
        out.append(
            _invalid(
                field,
                key,
                "name part must consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character, "
                "and be no more than 63 characters",
            )
        )
    return out


def metadata_problems(res: resources.Resource, obj: Mapping[str, Any]) -> list[Problem]:
    meta = obj.get("metadata") or {}
    out: list[Problem] = []
    name = meta.get("name") or ""
    label_names = res.plural in ("namespaces", "services")
    out += _name_problems("metadata.name", name, label=label_names)
    for key, value in (meta.get("labels") or {}).items():
        out += _qualified_name_problems("metadata.labels", key)
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            out.append(
                _invalid(
                    "metadata.labels",
                    value,
                    "a valid label must be an empty string or consist of alphanumeric "
                    "characters, '-', '_' or '.', and must start and end with an alphanumeric "
                    "character, and be no more than 63 characters",
                )
            )
    annotations = meta.get("annotations") or {}
    for key in annotations:
        out += _qualified_name_problems("metadata.annotations", key)
    if sum(len(k) + len(str(v)) for k, v in annotations.items()) > 256 * 1024:
        out.append(Problem("metadata.annotations", "FieldValueTooLong", "Too long", 422))
    return out


# ------------------------------------------------------------------------ pods


def _image_pull_policy(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    if "@" in image:
        return "IfNotPresent"
    if ":" not in last or last.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            if not isinstance(container, dict):
                continue
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            container.setdefault("resources", {})
            if isinstance(container.get("image"), str):
                container.setdefault("imagePullPolicy", _image_pull_policy(container["image"]))


def pod_spec_problems(spec: Mapping[str, Any], prefix: str) -> list[Problem]:
    out: list[Problem] = []
    names: set[str] = set()
    if not spec.get("containers"):
        out.append(Problem(f"{prefix}.containers", "FieldValueRequired", "Required value", 422))
    for group in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(group) or []):
            if not isinstance(container, Mapping):
                continue
            where = f"{prefix}.{group}[{i}]"
            name = container.get("name") or ""
            if name:
                out += _name_problems(f"{where}.name", name, label=True)
                if name in names:
                    out.append(
                        Problem(
                            f"{where}.name",
                            "FieldValueDuplicate",
                            f'Duplicate value: "{name}"',
                            422,
                        )
                    )
                names.add(name)
            if not container.get("image"):
                out.append(Problem(f"{where}.image", "FieldValueRequired", "Required value", 422))
            for j, env in enumerate(container.get("env") or []):
                env_name = (env or {}).get("name") or ""
                if env_name and not _ENV_NAME.match(env_name):
                    out.append(
                        _invalid(
                            f"{where}.env[{j}].name",
                            env_name,
                            "a valid environment variable name must consist of alphabetic "
                            "characters, digits, '_', '-', or '.', and must not start with a digit",
                        )
                    )
                source = (env or {}).get("valueFrom")
                if source and env.get("value"):
                    out.append(
                        _invalid(
                            f"{where}.env[{j}].valueFrom",
                            "",
                            "may not be specified when `value` is not empty",
                        )
                    )
    policy = spec.get("restartPolicy")
    if policy not in (None, "Always", "OnFailure", "Never"):
        out.append(
            Problem(
                f"{prefix}.restartPolicy",
                "FieldValueNotSupported",
                f'Unsupported value: "{policy}": supported values: "Always", "OnFailure", "Never"',
                422,
            )
        )
    return out


def admit_pod(pod: dict[str, Any], service_account: Mapping[str, Any] | None) -> None:
    """The ServiceAccount admission plug-in: pull secrets of the service account."""
    spec = pod.setdefault("spec", {})
    if not spec.get("imagePullSecrets") and service_account is not None:
        secrets = service_account.get("imagePullSecrets") or []
        if secrets:
            spec["imagePullSecrets"] = [{"name": s.get("name")} for s in secrets]


# ------------------------------------------------------------------------ jobs


def default_job(job: dict[str, Any], uid: str) -> None:
    meta = job["metadata"]
    spec = job.setdefault("spec", {})
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    template = spec.setdefault("template", {})
    tmeta = template.setdefault("metadata", {})
    generated = {
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": meta["name"],
        "controller-uid": uid,
        "job-name": meta["name"],
    }
    if not spec.get("manualSelector"):
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        tmeta["labels"] = {**(tmeta.get("labels") or {}), **generated}
    default_pod_spec(template.setdefault("spec", {}))


def job_problems(job: Mapping[str, Any]) -> list[Problem]:
    spec = job.get("spec") or {}
    tspec = (spec.get("template") or {}).get("spec") or {}
    out = pod_spec_problems(tspec, "spec.template.spec")
    policy = tspec.get("restartPolicy")
    if policy not in ("OnFailure", "Never"):
        out.append(
            Problem(
                "spec.template.spec.restartPolicy",
                "FieldValueNotSupported",
                f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"',
                422,
            )
        )
    for field in ("parallelism", "completions", "backoffLimit", "activeDeadlineSeconds"):
        value = spec.get(field)
        if isinstance(value, int) and value < (1 if field == "activeDeadlineSeconds" else 0):
            out.append(_invalid(f"spec.{field}", value, "must be greater than or equal to 0"))
    ttl = spec.get("ttlSecondsAfterFinished")
    if isinstance(ttl, int) and ttl < 0:
        out.append(
            _invalid("spec.ttlSecondsAfterFinished", ttl, "must be greater than or equal to 0")
        )
    return out


# --------------------------------------------------------------------- secrets


class DecodeError(ValueError):
    """The body cannot be decoded (the server answers 400)."""


def normalise_secret(secret: dict[str, Any]) -> None:
    """Merge ``stringData`` into base64 ``data`` and default the type; raise ``DecodeError``."""
    data = secret.get("data") or {}
    string_data = secret.get("stringData") or {}
    for field, value in (("data", data), ("stringData", string_data)):
        if not isinstance(value, dict):
            raise DecodeError(
                'Secret in version "v1" cannot be handled as a Secret: json: cannot unmarshal '
                f"{type(value).__name__} into Go struct field Secret.{field} of type map"
            )
    for key, value in data.items():
        if not isinstance(value, str):
            raise DecodeError(
                f'Secret in version "v1" cannot be handled as a Secret: data[{key}] must be a '
                "base64 string"
            )
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise DecodeError(
                'Secret in version "v1" cannot be handled as a Secret: illegal base64 data '
                f"in data[{key}]"
            ) from e
    secret.pop("stringData", None)
    for key, value in string_data.items():
        if not isinstance(value, str):
            raise DecodeError(
                'Secret in version "v1" cannot be handled as a Secret: json: cannot unmarshal '
                f"{type(value).__name__} into Go struct field Secret.stringData of type string"
            )
        data[key] = base64.b64encode(value.encode()).decode()
    if data:
        secret["data"] = data
    secret.setdefault("type", "Opaque")


def secret_problems(secret: Mapping[str, Any]) -> list[Problem]:
    out: list[Problem] = []
    data: Mapping[str, str] = secret.get("data") or {}
    total = 0
    for key, value in data.items():
        if not _SECRET_KEY.match(key) or key in (".", ".."):
            out.append(
                _invalid(
                    "data",
                    key,
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                )
            )
        total += len(base64.b64decode(value))
    if total > MAX_SECRET_BYTES:
        out.append(
            Problem("data", "FieldValueTooLong", "Too long: must have at most 1048576 bytes", 422)
        )
    kind = secret.get("type", "Opaque")
    for key in SECRET_REQUIRED_KEYS.get(kind, ()):
        if key not in data:
            out.append(Problem(f"data[{key}]", "FieldValueRequired", "Required value", 422))
    if kind in ("kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg"):
        key = ".dockerconfigjson" if kind == "kubernetes.io/dockerconfigjson" else ".dockercfg"
        if key in data:
            try:
                parsed = json.loads(base64.b64decode(data[key]))
            except ValueError as e:
                out.append(
                    Problem(
                        f"data[{key}]",
                        "FieldValueInvalid",
                        f'Invalid value: "<secret contents redacted>": {type(e).__name__}: '
                        "not valid JSON",
                        422,
                    )
                )
            else:
                if not isinstance(parsed, dict):
                    out.append(
                        Problem(
                            f"data[{key}]",
                            "FieldValueInvalid",
                            'Invalid value: "<secret contents redacted>": not a JSON object',
                            422,
                        )
                    )
    if kind == "kubernetes.io/basic-auth" and not ({"username", "password"} & set(data)):
        out.append(Problem("data[username]", "FieldValueRequired", "Required value", 422))
    if kind == "kubernetes.io/service-account-token":
        annotations = (secret.get("metadata") or {}).get("annotations") or {}
        if "kubernetes.io/service-account.name" not in annotations:
            out.append(
                Problem(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                    "FieldValueRequired",
                    "Required value",
                    422,
                )
            )
    return out


def secret_update_problems(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Problem]:
    out: list[Problem] = []
    if old.get("type", "Opaque") != new.get("type", "Opaque"):
        out.append(_invalid("type", new.get("type"), "field is immutable"))
    if old.get("immutable"):
        if (old.get("data") or {}) != (new.get("data") or {}):
            out.append(
                Problem(
                    "data",
                    "FieldValueForbidden",
                    "Forbidden: field is immutable when `immutable` is set",
                    422,
                )
            )
        if not new.get("immutable"):
            out.append(
                Problem(
                    "immutable",
                    "FieldValueForbidden",
                    "Forbidden: field is immutable when `immutable` is set",
                    422,
                )
            )
    return out


# -------------------------------------------------------------------- dispatch


def problems(res: resources.Resource, obj: Mapping[str, Any]) -> list[Problem]:
    """Semantic problems of an object about to be stored (schema problems come separately)."""
    out = metadata_problems(res, obj)
    if res.plural == "pods":
        out += pod_spec_problems(obj.get("spec") or {}, "spec")
    elif res.plural == "jobs":
        out += job_problems(obj)
    elif res.plural == "secrets":
        out += secret_problems(obj)
    elif res.plural in ("deployments", "replicasets", "statefulsets", "daemonsets"):
        tspec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        out += pod_spec_problems(tspec, "spec.template.spec")
    return out


def update_problems(
    res: resources.Resource, old: Mapping[str, Any], new: Mapping[str, Any]
) -> list[Problem]:
    """Changes the server forbids on update."""
    out: list[Problem] = []
    if res.plural == "secrets":
        out += secret_update_problems(old, new)
    elif res.plural == "pods":
        old_spec, new_spec = dict(old.get("spec") or {}), dict(new.get("spec") or {})
        for spec in (old_spec, new_spec):
            for key in ("activeDeadlineSeconds", "tolerations", "nodeName"):
                spec.pop(key, None)
            spec["containers"] = [
                {k: v for k, v in c.items() if k != "image"} for c in spec.get("containers") or []
            ]
            spec["initContainers"] = [
                {k: v for k, v in c.items() if k != "image"}
                for c in spec.get("initContainers") or []
            ]
        if old_spec != new_spec:
            out.append(
                Problem(
                    "spec",
                    "FieldValueForbidden",
                    "Forbidden: pod updates may not change fields other than "
                    "`spec.containers[*].image`, `spec.initContainers[*].image`, "
                    "`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to "
                    "existing tolerations)",
                    422,
                )
            )
    elif res.plural == "jobs":
        old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
        for field in ("selector", "completionMode", "podReplacementPolicy"):
            if old_spec.get(field) != new_spec.get(field):
                out.append(_invalid(f"spec.{field}", new_spec.get(field), "field is immutable"))
        if old_spec.get("template") != new_spec.get("template"):
            out.append(
                Problem(
                    "spec.template", "FieldValueInvalid", "Invalid value: field is immutable", 422
                )
            )
    return out
