"""The emulator's API errors: a failure with the ``Status`` body kube-apiserver sends.

Every part of the emulator raises these (the store, admission, faults, the HTTP face);
the server turns one into its HTTP answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scanqueue.sim import resources, validation

Obj = dict[str, Any]


class ApiError(Exception):
    """An API failure with the ``Status`` a real server sends."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})
        self.retry_after = retry_after

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(res: resources.Resource, name: str) -> ApiError:
    group = f".{res.group}" if res.group else ""
    return ApiError(
        404,
        "NotFound",
        f'{res.plural}{group} "{name}" not found',
        details={"name": name, "kind": res.plural, **({"group": res.group} if res.group else {})},
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(res: resources.Resource, name: str, problems: list[validation.Problem]) -> ApiError:
    """422 Invalid (or 400 when the body has a wrong JSON type), listing every cause."""
    if any(p.code == 400 for p in problems):
        first = next(p for p in problems if p.code == 400)
        return ApiError(
            400,
            "BadRequest",
            f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: '
            f"{first.message}",
        )
    text = ", ".join(f"{p.field}: {p.message}" for p in problems)
    if len(problems) > 1:
        text = f"[{text}]"
    return ApiError(
        422,
        "Invalid",
        f'{res.kind} "{name}" is invalid: {text}',
        details={
            "name": name,
            "group": res.group,
            "kind": res.kind,
            "causes": [
                {"reason": p.reason, "message": p.message, "field": p.field} for p in problems
            ],
        },
    )
