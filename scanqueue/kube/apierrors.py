"""How the Kubernetes API fails, as scanqueue errors: translated once, here.

404 ``NotFound``, 409 ``Conflict``, 410 ``Gone``, 429/5xx/connection failures
``TemporaryError`` (with the server's ``Retry-After``), a 403 ``Forbidden`` naming the
RBAC rule that would allow the call, other refusals ``PermanentError``. Messages name the
verb, the kind and ``namespace/name``.

What it must never do: chain or quote a Secret's response (it could echo what was sent).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3
from kubernetes.client.exceptions import ApiException

from scanqueue import errors

Object = dict[str, Any]
_T = TypeVar("_T")


class NotFound(errors.PermanentError):
    """The object does not exist (HTTP 404)."""


class Forbidden(errors.PermanentError):
    """The identity in use may not do this (HTTP 403); the message names the RBAC rule missing."""

    def __init__(self, message: str, *, verb: str = "", resource: str = "", namespace: str = ""):
        super().__init__(message)
        self.verb, self.resource, self.namespace = verb, resource, namespace


class Conflict(errors.TemporaryError):
    """The object exists already or changed meanwhile (HTTP 409); reading it again may help."""


class Gone(errors.TemporaryError):
    """The resourceVersion is too old (HTTP 410): list again, then watch from the new one."""


def translate(
    verb: str, kind: str, namespace: str | None, name: str | None, call: Callable[[], _T]
) -> _T:
    """Return ``call()``; raise its API or connection failure as a scanqueue error."""
    where = location(namespace, name)
    try:
        return call()
    except ApiException as e:
        error = from_exception(verb, kind, where, e)
        if kind == "Secret":  # the response body could hold what was sent: do not chain it
            raise error from None
        raise error from e
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise errors.TemporaryError(
            f"{verb} {kind} {where}: cannot reach the API server ({type(e).__name__}: {e}); retry"
        ) from e


def location(namespace: str | None, name: str | None) -> str:
    """``namespace/name`` as messages name it (a list: the namespace, or all namespaces)."""
    if name is None:
        return namespace or "all namespaces"
    return f"{namespace}/{name}" if namespace else name


def from_exception(verb: str, kind: str, where: str, e: ApiException) -> errors.ScanqueueError:
    """The error the client's ``ApiException`` stands for (its Status body, if any, read)."""
    status: Object = {}
    if e.body:
        with contextlib.suppress(ValueError, TypeError):
            decoded = json.loads(e.body)
            if isinstance(decoded, dict):
                status = decoded
    code = int(e.status or status.get("code") or 0)
    if not status:
        status = {"code": code, "reason": e.reason or "", "message": ""}
    delay = _retry_after(e.headers)
    return for_status(verb, kind, where, code, status, delay=delay)


def for_status(
    verb: str, kind: str, where: str, code: int, status: Object, *, delay: float | None
) -> errors.ScanqueueError:
    """The error for an API Status ``code`` (a response's or a watch's ERROR event)."""
    reason = str(status.get("reason") or "")
    # A Secret's Status could echo what was sent; name the fields only, never the message.
    if kind == "Secret":
        causes = (status.get("details") or {}).get("causes") or []
        fields = sorted({str(c.get("field")) for c in causes if c.get("field")})
        detail = f"{reason} {', '.join(fields)}".strip()
    else:
        detail = str(status.get("message") or reason)
    text = f"{verb} {kind} {where}: HTTP {code}" + (f" {detail}" if detail else "")
    if code == 404:
        return NotFound(f"{text}; it does not exist (any more)")
    if code == 409:
        return Conflict(f"{text}; read it again and retry", delay=delay)
    if code == 410:
        return Gone(f"{text}; list again and watch from the new resourceVersion", delay=delay)
    if code == 429 or code >= 500 or code == 0:
        return errors.TemporaryError(f"{text}; retry later", delay=delay)
    if code == 401:
        return errors.PermanentError(f"{text}; the cluster's credentials were refused")
    if code == 403 and "exceeded quota" in str(status.get("message") or ""):
        # a ResourceQuota of the namespace is full (deploy/24-quota-scans.yaml): it frees
        # up as scans finish, so this is not a missing permission
        return errors.TemporaryError(
            f"{text}; the namespace's ResourceQuota is full: retry when scans finish, "
            "or raise the quota together with max_inflight",
            delay=delay,
        )
    if code == 403:
        return _forbidden(verb, kind, where, text)
    return errors.PermanentError(text)


_RBAC_VERBS = {"read": "get", "read log of": "get", "resume": "patch"}


def _forbidden(verb: str, kind: str, where: str, text: str) -> Forbidden:
    """A 403 as the RBAC rule that would allow it: verb, resource, namespace."""
    rbac_verb = _RBAC_VERBS.get(verb, verb)
    resource = "pods/log" if verb == "read log of" else f"{kind.lower()}s"
    if where == "all namespaces":
        namespace, scope = "", "cluster-wide (a ClusterRole)"
    else:
        namespace = where.split("/", 1)[0]
        scope = f"in namespace {namespace}"
    return Forbidden(
        f"{text}; the identity in use may not {rbac_verb} {resource} {scope}: grant it that "
        f"(verbs: [{rbac_verb}], resources: [{resource}]) — see docs/rbac.md",
        verb=rbac_verb,
        resource=resource,
        namespace=namespace,
    )


def _retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        return None
