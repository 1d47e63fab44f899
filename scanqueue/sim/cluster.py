"""The emulator's state and API semantics, independent of HTTP.

One ``Cluster`` holds every object as a camelCase dict (stored without
``kind``/``apiVersion``, as list items come from a real server), one
cluster-wide resourceVersion counter, the retained window of change events
that watches resume from, and the owner index used by garbage collection.
Create, get, list, replace, patch and delete behave as kube-apiserver's do,
errors included (``apierrors.ApiError`` carries the ``Status`` body). Stored dicts are
never mutated after they are stored: every write stores a new dict, so that
events and readers may hold on to old versions without copying.

It must never import scanqueue's production modules: a bug there must not be
hidden by the same bug here.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import datetime
import functools
import json
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from scanqueue.sim import admission, apierrors, bodies, patch, resources, selectors, validation

Obj = dict[str, Any]
_T = TypeVar("_T")
ObjList = list[Obj]  # spelled out: inside Cluster, "list" is the method
Warnings = list[str]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def clone(value: _T) -> _T:
    """A deep copy of JSON-shaped data (dicts, lists, scalars); much faster than deepcopy."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list):
        return [clone(v) for v in value]  # type: ignore[return-value]
    return value


_last_stamp: tuple[int, str] = (0, "1970-01-01T00:00:00Z")  # (second, its text), the last one made


def now_text(at: float | None = None) -> str:
    """``at`` (else now) as an RFC 3339 UTC timestamp to the second, as objects carry them.

    Formatted once per second: a scan stamps a dozen fields (conditions, events, times)
    within the same second, and strftime was a few percent of the emulator's CPU.
    """
    global _last_stamp
    second = math.floor(at if at is not None else time.time())
    last = _last_stamp  # one read: another thread may replace it meanwhile
    if last[0] == second:
        return last[1]
    text = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _last_stamp = (second, text)
    return text


@functools.lru_cache(maxsize=4096)
def parse_time(text: str) -> float:
    """The POSIX time of an RFC 3339 UTC timestamp as ``now_text`` writes it (cached: the
    Job controller reads the same startTime and condition times on every pass)."""
    return (
        datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
        .replace(tzinfo=datetime.UTC)
        .timestamp()
    )


@dataclasses.dataclass(frozen=True)
class Event:
    rv: int
    resource: str  # resource key
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj
    old: Obj | None


Listener = Callable[[Event], None]
Relevant = Callable[[Event], bool]  # whether a watch may send something for a change


@dataclasses.dataclass
class ListResult:
    items: list[Obj]
    resource_version: int
    cont: str | None
    remaining: int | None


def _key(obj: Mapping[str, Any], res: resources.Resource) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace", "") if res.namespaced else "", meta.get("name", ""))


def _strip_type(obj: Mapping[str, Any]) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


class Cluster:
    """State and semantics of one emulated API server; thread-safe (one re-entrant lock)."""

    def __init__(
        self,
        *,
        kube_version: str = "1.30",
        history: int = 50_000,
        validate: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube_version = kube_version
        self.history = history  # change events kept for watches to resume from
        self.validate = validate
        self.clock = clock
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        # a watch waits for its own resource's changes: woken by every commit, each watch
        # thread took the lock and looked through events it then dropped (a dozen a scan)
        self._changed_by = {r.key: threading.Condition(self.lock) for r in resources.RESOURCES}
        # each open watch waits on a condition of its own, notified only by changes it may
        # send (the farm's cluster-wide pod watch, by selector, drops every scan pod's)
        self._watchers: dict[str, dict[int, tuple[threading.Condition, Relevant]]] = {
            r.key: {} for r in resources.RESOURCES
        }
        self._rv = 0
        self._objects: dict[str, dict[Key, Obj]] = {r.key: {} for r in resources.RESOURCES}
        # the same objects by namespace: listing a namespace's pods (the farm does per scan)
        # looked at every pod in the cluster; kept in step with _objects by _commit alone
        self._in_namespace: dict[str, dict[str, dict[Key, Obj]]] = {
            r.key: {} for r in resources.RESOURCES
        }
        self._events: list[Event] = []
        self._compacted = 0  # events with rv <= this are no longer retained
        self._owned: dict[str, set[tuple[str, Key]]] = {}  # owner uid -> dependents
        self._uids: dict[str, tuple[str, Key]] = {}  # uid -> where the object lives
        self.listeners: list[Listener] = []
        self.logs: dict[str, dict[str, str]] = {}  # pod uid -> container -> log
        self.closed = False
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(resources.BY_KEY["namespaces"], "", {"metadata": {"name": name}})

    # ---------------------------------------------------------------- state

    @property
    def resource_version(self) -> int:
        with self.lock:
            return self._rv

    @property
    def oldest_resumable(self) -> int:
        """The oldest resourceVersion a watch can still resume from."""
        with self.lock:
            return self._compacted

    def compact(self, keep: int = 0) -> None:
        """Forget all but the last ``keep`` change events (watches from before get 410)."""
        with self.lock:
            self._trim(keep)

    def _trim(self, keep: int) -> None:
        drop = len(self._events) - keep
        if drop > 0:
            self._compacted = self._events[drop - 1].rv
            del self._events[:drop]
        elif keep == 0:
            self._compacted = self._rv

    def lookup(self, res: resources.Resource, namespace: str, name: str) -> Obj | None:
        with self.lock:
            return self._objects[res.key].get((namespace if res.namespaced else "", name))

    def by_uid(self, uid: str) -> tuple[resources.Resource, Obj] | None:
        with self.lock:
            where = self._uids.get(uid)
            if where is None:
                return None
            res = resources.BY_KEY[where[0]]
            obj = self._objects[where[0]].get(where[1])
            return (res, obj) if obj is not None else None

    def dependents(self, uid: str) -> list[tuple[resources.Resource, Obj]]:
        with self.lock:
            out = []
            for res_key, key in sorted(self._owned.get(uid, ())):
                obj = self._objects[res_key].get(key)
                if obj is not None:
                    out.append((resources.BY_KEY[res_key], obj))
            return out

    def objects(self, res: resources.Resource, namespace: str | None = None) -> list[Obj]:
        with self.lock:
            return list(self._table(res, namespace).values())

    def _table(self, res: resources.Resource, namespace: str | None) -> dict[Key, Obj]:
        """The stored objects of ``res`` in ``namespace`` (all of them for None), in the
        order they were first stored; the caller holds the lock and does not change it."""
        if namespace is None:
            return self._objects[res.key]
        return self._in_namespace[res.key].get(namespace, {})

    def changed_for(self, res: resources.Resource) -> threading.Condition:
        """The condition (on ``lock``) notified when an object of ``res`` changes."""
        return self._changed_by[res.key]

    @contextlib.contextmanager
    def watching(
        self, res: resources.Resource, relevant: Relevant
    ) -> Iterator[threading.Condition]:
        """A condition (on ``lock``) notified by the changes of ``res`` for which
        ``relevant(event)`` is true (or raises), while the ``with`` block lasts."""
        condition = threading.Condition(self.lock)
        with self.lock:
            self._watchers[res.key][id(condition)] = (condition, relevant)
        try:
            yield condition
        finally:
            with self.lock:
                del self._watchers[res.key][id(condition)]

    def wake_all(self) -> None:
        """Wake every thread waiting for a change (the emulator is stopping)."""
        with self.lock:
            self.changed.notify_all()
            for condition in self._changed_by.values():
                condition.notify_all()
            for watchers in self._watchers.values():
                for condition, _ in watchers.values():
                    condition.notify_all()

    def events_since(self, rv: int) -> list[Event] | None:
        """Events after ``rv``; ``None`` when ``rv`` is older than the retained window."""
        with self.lock:
            if rv < self._compacted:
                return None
            start = bisect.bisect_right(self._events, rv, key=lambda e: e.rv)
            return self._events[start:]

    def _commit(self, res: resources.Resource, kind: str, obj: Obj, old: Obj | None) -> Obj:
        """Store (or remove) ``obj`` with the next resourceVersion; return the stored dict."""
        self._rv += 1
        meta = dict(obj.get("metadata") or {})
        meta["resourceVersion"] = str(self._rv)
        stored = {**obj, "metadata": meta}
        key = _key(stored, res)
        table = self._objects[res.key]
        uid = meta.get("uid", "")
        if old is not None:
            for ref in (old.get("metadata") or {}).get("ownerReferences") or []:
                owner_uid = ref.get("uid", "")
                dependents = self._owned.get(owner_uid)
                if dependents is not None:
                    dependents.discard((res.key, key))
                    if not dependents and owner_uid not in self._uids:
                        del self._owned[owner_uid]
        in_namespace = self._in_namespace[res.key]
        if kind == "DELETED":
            table.pop(key, None)
            same = in_namespace.get(key[0])
            if same is not None:
                same.pop(key, None)
                if not same:
                    del in_namespace[key[0]]
            self._uids.pop(uid, None)
            if not self._owned.get(uid):
                self._owned.pop(uid, None)
            if res.plural == "pods":
                self.logs.pop(uid, None)
        else:
            table[key] = stored
            in_namespace.setdefault(key[0], {})[key] = stored
            self._uids[uid] = (res.key, key)
            for ref in meta.get("ownerReferences") or []:
                self._owned.setdefault(ref.get("uid", ""), set()).add((res.key, key))
        event = Event(self._rv, res.key, kind, stored, old)
        self._events.append(event)
        if len(self._events) > self.history * 2:
            self._trim(self.history)
        self.changed.notify_all()
        self._changed_by[res.key].notify_all()
        for condition, relevant in self._watchers[res.key].values():
            try:
                wake = relevant(event)
            except Exception:  # the watch's own filtering will meet it: let it
                wake = True
            if wake:
                condition.notify()
        for listener in list(self.listeners):
            listener(event)
        return stored

    # ---------------------------------------------------------- validation

    def _decode(self, res: resources.Resource, body: Any, *, owned: bool = False) -> Obj:
        if not isinstance(body, dict):
            raise apierrors.bad_request(
                f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: '
                "json: cannot unmarshal into Go value of type struct"
            )
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version is not None and api_version != res.api_version:
            raise apierrors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({res.api_version})"
            )
        if kind is not None and kind != res.kind:
            raise apierrors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({res.kind})"
            )
        obj = _strip_type(body) if owned else clone(_strip_type(body))
        if obj.get("metadata") is None:
            obj["metadata"] = {}
        problem = bodies.metadata_problem(obj["metadata"])
        if problem:
            raise apierrors.bad_request(
                f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: '
                f"json: cannot unmarshal {problem}"
            )
        if res.plural == "secrets":
            try:
                admission.normalise_secret(obj)
            except admission.DecodeError as e:
                raise apierrors.bad_request(str(e)) from e
        return obj

    def _namespace(
        self, res: resources.Resource, namespace: str, obj: Obj, *, creating: bool
    ) -> str:
        meta = obj["metadata"]
        if not res.namespaced:
            meta.pop("namespace", None)
            return ""
        given = meta.get("namespace")
        if given and namespace and given != namespace:
            raise apierrors.bad_request(
                "the namespace of the provided object does not match the namespace sent "
                "on the request"
            )
        namespace = namespace or given or ""
        if not namespace:
            raise apierrors.bad_request(
                "the server could not find the requested resource: namespace required"
            )
        meta["namespace"] = namespace
        ns = self._objects["namespaces"].get(("", namespace))
        if ns is None:
            raise apierrors.ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                details={"name": namespace, "kind": "namespaces"},
            )
        if creating and (ns.get("metadata") or {}).get("deletionTimestamp"):
            raise apierrors.ApiError(
                403,
                "Forbidden",
                f'{res.plural} "{meta.get("name", "")}" is forbidden: unable to create new '
                f"content in namespace {namespace} because it is being terminated",
            )
        return namespace

    def _check(
        self,
        res: resources.Resource,
        obj: Obj,
        old: Obj | None,
        *,
        field_validation: str,
        warnings: list[str] | None,
    ) -> bool:
        """bodies.check with this server's validation setting and Kubernetes version."""
        return bodies.check(
            res,
            obj,
            old,
            field_validation=field_validation,
            warnings=warnings,
            validate=self.validate,
            kube_version=self.kube_version,
        )

    # --------------------------------------------------------------- create

    def create(
        self,
        res: resources.Resource,
        namespace: str,
        body: Any,
        *,
        dry_run: bool = False,
        keep_status: bool = False,
        field_validation: str = "Strict",
        warnings: list[str] | None = None,
        owned: bool = False,
    ) -> Obj:
        """Create an object; ``keep_status`` (in-process callers only) keeps a given status.
        ``owned``: the caller hands ``body`` over (fresh from ``json.loads`` or built for this
        call, nothing shared, never used again), so it is stored without a deep copy."""
        obj = self._decode(res, body, owned=owned)
        meta = obj["metadata"]
        with self.lock:
            namespace = self._namespace(res, namespace, obj, creating=True)
            if meta.get("resourceVersion"):
                raise apierrors.bad_request(
                    "resourceVersion should not be set on objects to be created"
                )
            if not meta.get("name"):
                meta["name"] = self._generated_name(res, namespace, meta.get("generateName"))
            name = meta["name"]
            if (namespace, name) in self._objects[res.key]:
                raise _already_exists(res, name)
            for field in (
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "selfLink",
                "managedFields",
            ):
                meta.pop(field, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_text(self.clock())
            if res.group in ("apps", "batch"):
                meta["generation"] = 1
            if "status" in res.subresources and not keep_status:
                obj.pop("status", None)
            try:
                self._prepare_create(res, obj)
            except (TypeError, AttributeError, ValueError) as e:
                # a body of the wrong shape (the schema check comes next and would name it)
                problems = validation.validate(bodies.typed(res, obj), self.kube_version)
                if problems:
                    raise apierrors.invalid(res, name, problems) from e
                raise apierrors.bad_request(
                    f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: {e}'
                ) from e
            self._check(res, obj, None, field_validation=field_validation, warnings=warnings)
            if dry_run:
                return obj
            stored = self._commit(res, "ADDED", obj, None)
            if res.plural == "namespaces":  # the service account controller's work, at once
                self._commit(
                    resources.BY_KEY["serviceaccounts"],
                    "ADDED",
                    _default_service_account(name, meta["creationTimestamp"]),
                    None,
                )
            return stored

    def _generated_name(self, res: resources.Resource, namespace: str, prefix: Any) -> str:
        """A free name from ``generateName`` (five random characters, as the API server
        adds); 422 when there is neither a name nor a prefix. Caller holds the lock."""
        if not prefix:
            raise apierrors.invalid(
                res,
                "",
                [
                    validation.Problem(
                        "metadata.name",
                        "FieldValueRequired",
                        "Required value: name or generateName is required",
                        422,
                    )
                ],
            )
        name = ""
        for _ in range(10):
            name = str(prefix) + "".join(random.choices(_NAME_CHARS, k=5))
            if (namespace, name) not in self._objects[res.key]:
                break
        return name

    def _prepare_create(self, res: resources.Resource, obj: Obj) -> None:
        meta = obj["metadata"]
        if res.plural == "namespaces":
            meta["labels"] = {
                **(meta.get("labels") or {}),
                "kubernetes.io/metadata.name": meta["name"],
            }
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj.setdefault("status", {"phase": "Active"})
        elif res.plural == "pods":
            spec = obj.setdefault("spec", {})
            if isinstance(spec, dict):
                admission.default_pod_spec(spec)
                account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
                spec["serviceAccountName"] = account
                spec["serviceAccount"] = account
                sa = self._objects["serviceaccounts"].get((meta["namespace"], account))
                if sa is None:
                    raise apierrors.ApiError(
                        403,
                        "Forbidden",
                        f'pods "{meta["name"]}" is forbidden: error looking up service account '
                        f'{meta["namespace"]}/{account}: serviceaccount "{account}" not found',
                    )
                admission.admit_pod(obj, sa)
            obj.setdefault("status", {"phase": "Pending", "qosClass": "BestEffort"})
        elif res.plural == "jobs" and isinstance(obj.get("spec"), dict):
            admission.default_job(obj, meta["uid"])
            obj.setdefault("status", {})
        elif res.plural == "nodes":
            obj.setdefault("status", {})

    # ------------------------------------------------------------------ read

    def get(self, res: resources.Resource, namespace: str, name: str) -> Obj:
        obj = self.lookup(res, namespace, name)
        if obj is None:
            raise apierrors.not_found(res, name)
        return obj

    def list(
        self,
        res: resources.Resource,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        cont: str | None = None,
    ) -> ListResult:
        try:
            labels = selectors.parse_labels(label_selector)
            fields = selectors.parse_fields(field_selector, res.fields)
        except selectors.SelectorError as e:
            raise apierrors.bad_request(str(e)) from e
        start: Key | None = None
        list_rv: int | None = None
        if cont:
            try:
                token = json.loads(bytes.fromhex(cont).decode())
                start, list_rv = (token["ns"], token["name"]), int(token["rv"])
            except (ValueError, KeyError, TypeError) as e:
                raise apierrors.bad_request(f"continue key is not valid: {e}") from e
        with self.lock:
            if list_rv is not None and list_rv < self._compacted:
                raise apierrors.ApiError(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter.",
                )
            rv = self._rv if list_rv is None else list_rv
            table = self._table(res, namespace)
            keys = sorted(k for k in table if start is None or k > start)
            items: list[Obj] = []
            next_key: Key | None = None
            remaining = 0
            for k in keys:
                obj = table[k]
                if not selectors.labels_match(labels, obj) or (
                    fields is not None and not fields(obj)
                ):
                    continue
                if limit and len(items) >= limit:
                    if next_key is None:
                        next_key = _key(items[-1], res)
                    remaining += 1
                    continue
                items.append(obj)
        token_text = None
        if next_key is not None:
            token_text = (
                json.dumps({"ns": next_key[0], "name": next_key[1], "rv": rv}).encode().hex()
            )
        return ListResult(items, rv, token_text, remaining if next_key is not None else None)

    # ---------------------------------------------------------------- update

    # shape: kube-apiserver's update path in its order (preconditions, immutable fields,
    # admission, schema, status kept or not, commit), under one lock; each step is a helper
    def replace(
        self,
        res: resources.Resource,
        namespace: str,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Strict",
        warnings: Warnings | None = None,
    ) -> Obj:
        obj = self._decode(res, body)
        meta = obj["metadata"]
        with self.lock:
            old = self.get(res, namespace, name)
            old_meta = old["metadata"]
            if meta.get("name") and meta["name"] != name:
                raise apierrors.bad_request(
                    f"the name of the object ({meta['name']}) does not match the name on "
                    f"the URL ({name})"
                )
            meta["name"] = name
            self._namespace(res, namespace, obj, creating=False)
            given_rv = meta.get("resourceVersion")
            if given_rv and given_rv != old_meta["resourceVersion"]:
                group = f".{res.group}" if res.group else ""
                raise apierrors.ApiError(
                    409,
                    "Conflict",
                    f"Operation cannot be fulfilled on {res.plural}{group} "
                    f'"{name}": the object has been modified; please apply your changes '
                    "to the latest version and try again",
                    details={
                        "name": name,
                        "kind": res.plural,
                        **({"group": res.group} if res.group else {}),
                    },
                )
            if meta.get("uid") and meta["uid"] != old_meta["uid"]:
                raise apierrors.ApiError(
                    409,
                    "Conflict",
                    f"Precondition failed: UID in precondition: {meta['uid']}, "
                    f"UID in object meta: {old_meta['uid']}",
                )
            if subresource == "status":
                new = {**old, "status": obj.get("status")}
                if new["status"] is None:
                    new.pop("status")
            else:
                new = obj
                for field in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
                    if field in old_meta:
                        meta[field] = old_meta[field]
                    else:
                        meta.pop(field, None)
                if "status" in res.subresources:
                    if "status" in old:
                        new["status"] = old["status"]
                    else:
                        new.pop("status", None)
                if res.plural == "namespaces":
                    new["spec"] = old.get("spec", {})
                    meta["labels"] = {
                        **(meta.get("labels") or {}),
                        "kubernetes.io/metadata.name": name,
                    }
                if "generation" in meta and new.get("spec") != old.get("spec"):
                    meta["generation"] = int(meta["generation"]) + 1
            new_meta = dict(new["metadata"])
            new_meta["resourceVersion"] = old_meta["resourceVersion"]
            new = {**new, "metadata": new_meta}
            if new == old:
                return old  # a no-op update does not bump the resourceVersion
            pruned = self._check(
                res, new, old, field_validation=field_validation, warnings=warnings
            )
            if pruned and new == old:
                return old
            if dry_run:
                return new
            if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
                stored = self._commit(res, "MODIFIED", new, old)
                return self._commit(res, "DELETED", stored, stored)
            return self._commit(res, "MODIFIED", new, old)

    def patch(
        self,
        res: resources.Resource,
        namespace: str,
        name: str,
        body: Any,
        content_type: str,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Strict",
        warnings: Warnings | None = None,
    ) -> Obj:
        with self.lock:
            current = bodies.typed(res, self.get(res, namespace, name))
            try:
                patched = patch.apply(current, body, content_type)
            except patch.PatchError as e:
                reason = {400: "BadRequest", 415: "UnsupportedMediaType"}.get(e.code, "Invalid")
                raise apierrors.ApiError(e.code, reason, str(e)) from e
            return self.replace(
                res,
                namespace,
                name,
                patched,
                subresource=subresource,
                dry_run=dry_run,
                field_validation=field_validation,
                warnings=warnings,
            )

    # ---------------------------------------------------------------- delete

    def delete(
        self,
        res: resources.Resource,
        namespace: str,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Delete; return (the object as last stored, whether it is gone now)."""
        with self.lock:
            obj = self.get(res, namespace, name)
            meta = obj["metadata"]
            pre = preconditions or {}
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise apierrors.ApiError(
                    409,
                    "Conflict",
                    f"Precondition failed: UID in precondition: {pre['uid']}, "
                    f"UID in object meta: {meta['uid']}",
                )
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise apierrors.ApiError(
                    409,
                    "Conflict",
                    "Precondition failed: ResourceVersion in precondition: "
                    f"{pre['resourceVersion']}, "
                    f"ResourceVersion in object meta: {meta['resourceVersion']}",
                )
            if propagation not in (None, "Orphan", "Background", "Foreground"):
                raise apierrors.bad_request(f"DeletionPropagation {propagation!r} is not supported")
            policy = propagation or ("Orphan" if res.default_orphan else "Background")
            if dry_run:
                return obj, True
            if meta.get("deletionTimestamp"):
                return obj, False  # already being deleted
            finalizers = list(meta.get("finalizers") or [])
            if policy == "Foreground":
                finalizers.append("foregroundDeletion")
            if policy == "Orphan":
                self._orphan(meta["uid"])
            if res.plural == "namespaces":
                self._delete_namespace_contents(name)
            if finalizers:
                new_meta = {
                    **meta,
                    "deletionTimestamp": now_text(self.clock()),
                    "finalizers": finalizers,
                }
                if res.plural == "namespaces":
                    stored = self._commit(
                        res,
                        "MODIFIED",
                        {**obj, "metadata": new_meta, "status": {"phase": "Terminating"}},
                        obj,
                    )
                else:
                    stored = self._commit(res, "MODIFIED", {**obj, "metadata": new_meta}, obj)
                return stored, False
            return self._commit(res, "DELETED", obj, obj), True

    def _orphan(self, uid: str) -> None:
        for dep_res, dep in self.dependents(uid):
            refs = [r for r in dep["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
            meta = {**dep["metadata"], "ownerReferences": refs}
            if not refs:
                meta.pop("ownerReferences")
            self._commit(dep_res, "MODIFIED", {**dep, "metadata": meta}, dep)

    def _delete_namespace_contents(self, namespace: str) -> None:
        for res in resources.RESOURCES:
            if res.namespaced:
                for obj in self.objects(res, namespace):
                    self._commit(res, "DELETED", obj, obj)

    def finish_deletion(self, res: resources.Resource, obj: Obj, finalizer: str) -> None:
        """Drop ``finalizer`` (the garbage collector's); delete the object when none is left."""
        with self.lock:
            current = self.lookup(
                res, obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
            )
            if current is None or current["metadata"]["uid"] != obj["metadata"]["uid"]:
                return
            finalizers = [f for f in current["metadata"].get("finalizers") or [] if f != finalizer]
            meta = {**current["metadata"], "finalizers": finalizers}
            if not finalizers:
                meta.pop("finalizers")
            stored = self._commit(res, "MODIFIED", {**current, "metadata": meta}, current)
            if not finalizers:
                self._commit(res, "DELETED", stored, stored)

    def delete_collection(
        self,
        res: resources.Resource,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        propagation: str | None = None,
        dry_run: bool = False,
    ) -> ObjList:
        with self.lock:
            found = self.list(
                res, namespace, label_selector=label_selector, field_selector=field_selector
            )
            for obj in found.items:
                meta = obj["metadata"]
                self.delete(
                    res,
                    meta.get("namespace", ""),
                    meta["name"],
                    propagation=propagation,
                    dry_run=dry_run,
                )
            return found.items

    # --------------------------------------------------------------- helpers

    def write_status(self, res: resources.Resource, obj: Obj, status: Obj) -> Obj | None:
        """Controllers' status write, skipping validation; ``None`` if the object is gone."""
        with self.lock:
            meta = obj["metadata"]
            current = self.lookup(res, meta.get("namespace", ""), meta["name"])
            if current is None or current["metadata"]["uid"] != meta["uid"]:
                return None
            if current.get("status") == status:
                return current
            return self._commit(res, "MODIFIED", {**current, "status": status}, current)

    def write(self, res: resources.Resource, obj: Obj) -> Obj | None:
        """Controllers' whole-object write (spec and status), skipping validation."""
        with self.lock:
            meta = obj["metadata"]
            current = self.lookup(res, meta.get("namespace", ""), meta["name"])
            if current is None or current["metadata"]["uid"] != meta["uid"]:
                return None
            return self._commit(res, "MODIFIED", obj, current)

    def iter_all(self) -> Iterator[tuple[resources.Resource, Obj]]:
        with self.lock:
            snapshot = [(resources.BY_KEY[k], list(t.values())) for k, t in self._objects.items()]
        for res, objs in snapshot:
            for obj in objs:
                yield res, obj

    def owners_missing(self, obj: Mapping[str, Any]) -> bool:
        """True when every ownerReference of ``obj`` names an object that no longer exists."""
        refs: Iterable[Mapping[str, Any]] = (obj.get("metadata") or {}).get("ownerReferences") or []
        refs = list(refs)
        with self.lock:
            return bool(refs) and all(r.get("uid") not in self._uids for r in refs)


def _already_exists(res: resources.Resource, name: str) -> apierrors.ApiError:
    """The 409 kube-apiserver answers a create whose name is taken."""
    group = f".{res.group}" if res.group else ""
    return apierrors.ApiError(
        409,
        "AlreadyExists",
        f'{res.plural}{group} "{name}" already exists',
        details={"name": name, "kind": res.plural, **({"group": res.group} if res.group else {})},
    )


def _default_service_account(namespace: str, stamp: str) -> Obj:
    """The ``default`` ServiceAccount the controller creates in a new namespace."""
    return {
        "metadata": {
            "name": "default",
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "creationTimestamp": stamp,
        }
    }
