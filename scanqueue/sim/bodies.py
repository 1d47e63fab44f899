"""What the API server refuses in a request body, before anything is stored.

The schema (``validation``, with unknown fields dropped under fieldValidation Warn or
Ignore) and admission (``admission``), the JSON shape of ``metadata``, and the typed
form (``apiVersion``/``kind`` first) that single-object responses carry. ``cluster``
calls these on create and update; the storage itself is there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scanqueue.sim import admission, apierrors, resources, validation

Obj = dict[str, Any]

FIELD_VALIDATION = ("Strict", "Warn", "Ignore")


def _drop(obj: Any, path: tuple[str | int, ...]) -> None:
    """Remove the field at ``path`` (dict keys and list indexes) from ``obj``, if there."""
    for part in path[:-1]:
        try:
            obj = obj[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(obj, dict):
        obj.pop(path[-1], None)


_META_TYPES: dict[str, tuple[type, type | None]] = {
    # field: (its type, the type of its entries)
    "name": (str, None),
    "generateName": (str, None),
    "namespace": (str, None),
    "uid": (str, None),
    "resourceVersion": (str, None),
    "labels": (dict, str),
    "annotations": (dict, str),
    "finalizers": (list, str),
    "ownerReferences": (list, dict),
}


def metadata_problem(meta: Any) -> str | None:
    """What is wrong with the JSON types of ``metadata`` (the fields the server reads first)."""
    if not isinstance(meta, dict):
        return f"{type(meta).__name__} into Go struct field .metadata of type v1.ObjectMeta"
    for field, (kind, entries) in _META_TYPES.items():
        value = meta.get(field)
        if value is None:
            continue
        if not isinstance(value, kind):
            return f"{type(value).__name__} into Go struct field metadata.{field}"
        found: Any = value  # a dict or a list here
        items = list(found.values()) if isinstance(found, dict) else list(found)
        if entries is not None and not all(isinstance(v, entries) for v in items):
            return f"a value into Go struct field metadata.{field} of type {entries.__name__}"
    return None


def typed(res: resources.Resource, obj: Mapping[str, Any]) -> Obj:
    """``obj`` with its ``apiVersion`` and ``kind`` first, as single-object responses carry."""
    return {"apiVersion": res.api_version, "kind": res.kind, **obj}


def check(
    res: resources.Resource,
    obj: Obj,
    old: Obj | None,
    *,
    field_validation: str = "Strict",
    warnings: list[str] | None = None,
    validate: bool,
    kube_version: str,
) -> bool:
    """Refuse ``obj`` with the Status a server gives; return whether fields were dropped.

    ``field_validation`` is the request's ``fieldValidation``: Strict (the emulator's
    default) refuses unknown fields; Warn and Ignore drop them, Warn with a warning.
    """
    if field_validation not in FIELD_VALIDATION:
        raise apierrors.bad_request(
            f"fieldValidation must be one of {', '.join(FIELD_VALIDATION)}, "
            f"not {field_validation!r}"
        )
    name = (obj.get("metadata") or {}).get("name", "")
    problems: list[validation.Problem] = []
    pruned = False
    if validate:
        try:
            problems += validation.validate(typed(res, obj), kube_version)
        except validation.UnknownKindError as e:
            raise apierrors.bad_request(str(e)) from e
        if field_validation != "Strict":
            for problem in [p for p in problems if p.unknown is not None]:
                assert problem.unknown is not None
                _drop(obj, problem.unknown)
                pruned = True
                if field_validation == "Warn" and warnings is not None:
                    warnings.append(f'unknown field "{problem.field}"')
            problems = [p for p in problems if p.unknown is None]
    if not any(p.code == 400 for p in problems):
        try:
            problems += admission.problems(res, obj)
            if old is not None:
                problems += admission.update_problems(res, old, obj)
        except (TypeError, AttributeError, ValueError) as e:
            # a wrong shape the schema check was told to skip; still refuse it
            raise apierrors.bad_request(
                f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: {e}'
            ) from e
    if problems:
        raise apierrors.invalid(res, name, problems)
    return pruned
