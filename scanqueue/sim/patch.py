"""The three patch kinds kube-apiserver accepts: JSON patch, merge patch, strategic merge.

Strategic merge knows the merge keys of the lists scanqueue and its tests
touch (containers, env, volumes, ports, conditions, ownerReferences...);
other lists are replaced, as for a type without a patch strategy. Every
function returns a new object and never mutates its inputs.
"""

from __future__ import annotations

from typing import Any

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class PatchError(ValueError):
    """The patch document is malformed or cannot be applied (the server answers 4xx)."""

    def __init__(self, message: str, *, code: int = 422) -> None:
        super().__init__(message)
        self.code = code


# field name -> merge key, for lists merged by key in strategic merge patch
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "conditions": "type",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
    "secrets": "name",
    "addresses": "type",
    "taints": "key",
}
# lists of scalars merged as sets
MERGE_SCALAR_LISTS = {"finalizers"}


def _clone(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: a new document; ``target`` is left as it is.

    What the patch does not touch is ``target``'s own (shared, not copied: the cluster
    copies the result as it decodes it, so a copy here would be a second one of the
    whole object, for every ``kubectl patch``-like write).
    """
    if not isinstance(patch, dict):
        return _clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch with the merge keys above and the ``$patch`` directive."""
    if not isinstance(patch, dict):
        return _clone(patch)
    if patch.get("$patch") == "replace":
        return {k: _clone(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = _clone(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, MERGE_KEYS[key])
        elif isinstance(value, list) and key in MERGE_SCALAR_LISTS:
            merged = list(result.get(key) or [])
            merged += [v for v in value if v not in merged]
            result[key] = merged
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_list(current: list[Any], patch: list[Any], key: str) -> list[Any]:
    out = [_clone(item) for item in current]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"map: {item!r} does not contain declared merge key: {key}", code=400)
        index = next(
            (i for i, old in enumerate(out) if isinstance(old, dict) and old.get(key) == item[key]),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del out[index]
        elif index is None:
            out.append({k: _clone(v) for k, v in item.items() if k != "$patch"})
        else:
            out[index] = strategic_merge_patch(out[index], item)
    return out


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _resolve(doc: Any, pointer: str) -> tuple[Any, str]:
    """Return (parent container, last token) for a JSON pointer."""
    if not pointer.startswith("/"):
        raise PatchError(f"invalid JSON pointer {pointer!r}")
    tokens = [_unescape(t) for t in pointer[1:].split("/")]
    parent = doc
    for token in tokens[:-1]:
        if isinstance(parent, dict):
            if token not in parent:
                raise PatchError(f"doc is missing path: {pointer!r}")
            parent = parent[token]
        elif isinstance(parent, list):
            try:
                parent = parent[int(token)]
            except (ValueError, IndexError) as e:
                raise PatchError(f"doc is missing path: {pointer!r}") from e
        else:
            raise PatchError(f"doc is missing path: {pointer!r}")
    return parent, tokens[-1]


def _get(doc: Any, pointer: str) -> Any:
    if pointer == "":
        return doc
    parent, token = _resolve(doc, pointer)
    try:
        return parent[int(token)] if isinstance(parent, list) else parent[token]
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise PatchError(f"doc is missing path: {pointer!r}") from e


def _remove(doc: Any, pointer: str) -> Any:
    parent, token = _resolve(doc, pointer)
    try:
        return parent.pop(int(token)) if isinstance(parent, list) else parent.pop(token)
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise PatchError(f"unable to remove nonexistent key: {token}: missing value") from e


def _add(doc: Any, pointer: str, value: Any, *, replace: bool = False) -> None:
    parent, token = _resolve(doc, pointer)
    if isinstance(parent, list):
        if token == "-":
            parent.append(value)
            return
        try:
            index = int(token)
        except ValueError as e:
            raise PatchError(f"invalid array index {token!r}") from e
        if index < 0 or index > len(parent) or (replace and index >= len(parent)):
            raise PatchError(f"add operation does not apply: doc is missing path: {pointer!r}")
        if replace:
            parent[index] = value
        else:
            parent.insert(index, value)
    elif isinstance(parent, dict):
        if replace and token not in parent:
            raise PatchError(f"replace operation does not apply: doc is missing key: {pointer}")
        parent[token] = value
    else:
        raise PatchError(f"doc is missing path: {pointer!r}")


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch; a failed ``test`` is a ``PatchError``."""
    if not isinstance(operations, list):
        raise PatchError(
            "json: cannot unmarshal object into Go value of type []handlers.jsonPatchOp", code=400
        )
    doc = _clone(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid JSON patch operation {op!r}", code=400)
        name, path = op["op"], op["path"]
        if name == "add":
            _add(doc, path, _clone(op.get("value")))
        elif name == "remove":
            _remove(doc, path)
        elif name == "replace":
            _add(doc, path, _clone(op.get("value")), replace=True)
        elif name == "move":
            _add(doc, path, _remove(doc, op["from"]))
        elif name == "copy":
            _add(doc, path, _clone(_get(doc, op["from"])))
        elif name == "test":
            if _get(doc, path) != op.get("value"):
                raise PatchError(f"testing value {path} failed: test failed")
        else:
            raise PatchError(f"Unexpected kind: {name}", code=400)
    return doc


def apply(target: dict[str, Any], body: Any, content_type: str) -> dict[str, Any]:
    """Apply ``body`` of ``content_type`` to ``target``; raise ``PatchError``."""
    media = content_type.split(";", maxsplit=1)[0].strip().lower()
    if media == JSON_PATCH:
        result = json_patch(target, body)
    elif media == MERGE_PATCH:
        result = merge_patch(target, body)
    elif media == STRATEGIC_MERGE_PATCH:
        result = strategic_merge_patch(target, body)
    else:
        raise PatchError(f"the body of the request was in an unknown format: {media}", code=415)
    if not isinstance(result, dict):
        raise PatchError("the patch does not produce an object", code=400)
    return result
