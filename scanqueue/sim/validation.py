"""Schema validation of every object the emulator stores, with kubernetes-validate's schemas.

``kubernetes_validate.validate`` re-reads the schema files at each call; here
the loaded validator is cached per (Kubernetes version, apiVersion, kind).
The strict schemas forbid unknown fields: the emulator behaves like a server
asked for ``fieldValidation=Strict``, so that a typo in a manifest fails a
test instead of vanishing. Errors come back as ``Problem`` rows (field path,
reason, message, HTTP code) that the server turns into a ``Status``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import threading
from collections.abc import Mapping
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
from kubernetes_validate import utils as kv_utils


@dataclasses.dataclass(frozen=True)
class Problem:
    field: str  # "spec.containers[0].name"
    reason: str  # FieldValueRequired, FieldValueInvalid, FieldValueNotSupported, ...
    message: str  # "Required value", 'Unsupported value: "x"'
    code: int  # 422 for invalid values, 400 for a wrong JSON type
    unknown: tuple[str | int, ...] | None = None  # path of an unknown field, for pruning


class UnknownKindError(LookupError):
    """No schema for that apiVersion/kind in the chosen Kubernetes version."""


_lock = threading.Lock()


def _schema_version(desired: str) -> str:
    desired = desired.removeprefix("v")
    major_minor = kv_utils.major_minor(desired)
    versions = [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) <= major_minor]
    if not versions:
        raise UnknownKindError(f"kubernetes-validate has no schemas for Kubernetes {desired}")
    return str(versions[-1])


@functools.lru_cache(maxsize=8)
def _definitions(schema_dir: str) -> referencing.Registry[Any]:
    defs = kv_utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", "")
    resource: referencing.Resource[Any] = referencing.Resource.from_contents(defs)
    return resource @ referencing.Registry()


@functools.lru_cache(maxsize=256)
def _validator(version: str, api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema_dir = f"v{_schema_version(version)}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    filename = f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group_version}.json"
    try:
        schema = kv_utils.schema_contents(filename, version)
    except (FileNotFoundError, kubernetes_validate.VersionNotSupportedError) as e:
        raise UnknownKindError(f"no schema for {api_version} {kind} in Kubernetes {version}") from e
    registry = referencing.Resource.from_contents(schema) @ _definitions(schema_dir)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def path_text(parts: Any) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_JSON_TYPES = {
    str: "string",
    bool: "bool",
    int: "number",
    float: "number",
    list: "array",
    dict: "object",
    type(None): "null",
}


def _problems(error: jsonschema.ValidationError) -> list[Problem]:
    where = list(error.absolute_path)
    if error.validator == "required":
        instance = error.instance if isinstance(error.instance, Mapping) else {}
        return [
            Problem(path_text([*where, name]), "FieldValueRequired", "Required value", 422)
            for name in error.validator_value
            if name not in instance
        ]
    if error.validator == "additionalProperties":
        known = set((error.schema.get("properties") or {}).keys())
        instance = error.instance if isinstance(error.instance, Mapping) else {}
        return [
            Problem(
                path_text([*where, name]),
                "FieldValueInvalid",
                f'unknown field "{path_text([*where, name])}"',
                422,
                unknown=(*where, name),
            )
            for name in instance
            if name not in known
        ]
    if error.validator == "type":
        got = _JSON_TYPES.get(type(error.instance), type(error.instance).__name__)
        expected = error.validator_value
        expected = [t for t in expected if t != "null"] if isinstance(expected, list) else expected
        return [
            Problem(
                path_text(where),
                "FieldValueTypeInvalid",
                f"json: cannot unmarshal {got} into Go struct field {path_text(where)} "
                f"of type {expected[0] if isinstance(expected, list) else expected}",
                400,
            )
        ]
    if error.validator == "enum":
        allowed = ", ".join(json.dumps(v) for v in error.validator_value if v is not None)
        return [
            Problem(
                path_text(where),
                "FieldValueNotSupported",
                f"Unsupported value: {json.dumps(error.instance)}: supported values: {allowed}",
                422,
            )
        ]
    if error.context:
        # oneOf/anyOf (int-or-string and the like): report the first alternative's problem
        return _problems(min(error.context, key=lambda e: len(list(e.absolute_path))))
    return [
        Problem(
            path_text(where),
            "FieldValueInvalid",
            f"Invalid value: {json.dumps(error.instance)[:80]}: {error.message[:200]}",
            422,
        )
    ]


_MEMO: dict[str, tuple[Problem, ...]] = {}
_MEMO_SIZE = 4096
# metadata fields whose string values the schema never constrains beyond "a string":
# objects that differ only there validate alike (10,000 replicas of one template: one check)
_FREE_STRINGS = ("name", "generateName", "namespace", "uid", "resourceVersion", "creationTimestamp")


def _memo_key(obj: Mapping[str, Any], version: str) -> str:
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        meta = {
            k: ("" if k in _FREE_STRINGS and isinstance(v, str) else v) for k, v in meta.items()
        }
        obj = {**obj, "metadata": meta}
    return version + json.dumps(obj, sort_keys=True, default=repr)


def validate(obj: Mapping[str, Any], version: str) -> list[Problem]:
    """Every schema problem of ``obj`` (empty when valid); raise ``UnknownKindError``."""
    key = _memo_key(obj, version)
    with _lock:
        known = _MEMO.get(key)
        if known is not None:
            return list(known)
        validator = _validator(version, str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    problems: list[Problem] = []
    for error in validator.iter_errors(obj):
        problems.extend(_problems(error))
    with _lock:
        if len(_MEMO) >= _MEMO_SIZE:
            _MEMO.clear()
        _MEMO[key] = tuple(problems)
    return problems
