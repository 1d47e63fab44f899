"""Label and field selectors, parsed and matched as kube-apiserver does.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``,
``a``, ``!a``, comma-separated (AND). Field selectors: ``=``, ``==``, ``!=``
on the fields a resource supports; anything else is a ``SelectorError`` that
the server turns into a 400, as the real one does.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any


class SelectorError(ValueError):
    """The selector cannot be parsed or names an unsupported field."""


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match when the key is absent, like Kubernetes
        return not present or labels[self.key] not in self.values


_SET = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p for p in parts if p.strip()]


def parse_labels(text: str | None) -> tuple[Requirement, ...]:
    if not text:
        return ()
    out: list[Requirement] = []
    for part in _split(text):
        eq = _EQ.match(part)
        if eq:
            key, op, value = eq.groups()
            out.append(Requirement(key, "!=" if op == "!=" else "=", frozenset([value])))
            continue
        st = _SET.match(part)
        if st is None:
            raise SelectorError(f"unable to parse requirement: {part.strip()!r}")
        bang, key, op, values = st.groups()
        if op:
            if bang:
                raise SelectorError(f"unable to parse requirement: {part.strip()!r}")
            vals = frozenset(v.strip() for v in values.split(",") if v.strip())
            out.append(Requirement(key, op, vals))
        else:
            out.append(Requirement(key, "!" if bang else "exists"))
    return tuple(out)


def labels_match(requirements: tuple[Requirement, ...], obj: Mapping[str, Any]) -> bool:
    if not requirements:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(r.matches(labels) for r in requirements)


# field labels whose path in the object differs from their name
_FIELD_PATHS = {"status.successful": "status.succeeded"}


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    path = _FIELD_PATHS.get(path, path)
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


FieldMatcher = Callable[[Mapping[str, Any]], bool]


def parse_fields(text: str | None, supported: tuple[str, ...]) -> FieldMatcher | None:
    """Parse a field selector; raise ``SelectorError`` naming an unsupported field."""
    if not text:
        return None
    allowed = {"metadata.name", "metadata.namespace", *supported}
    terms: list[tuple[str, bool, str]] = []
    for part in _split(text):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if m is None:
            raise SelectorError(f"invalid selector: {part.strip()!r}; can't understand it")
        field, op, value = m.groups()
        if field not in allowed:
            raise SelectorError(f'field label not supported: "{field}"')
        terms.append((field, op != "!=", value))

    def match(obj: Mapping[str, Any]) -> bool:
        return all((_field_value(obj, f) == v) == eq for f, eq, v in terms)

    return match
