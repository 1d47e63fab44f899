"""Faults injected on purpose, for reliability tests: error statuses, dropped watches, forced 410.

``Faults.fail(status, verb=..., resource=..., count=...)`` makes the next
matching requests fail with 403/429/500/503/504 (429 and 503 carry
``Retry-After``; 403 is a permanent refusal, as RBAC gives);
``drop_watches()`` cuts every open watch connection without the final chunk,
as a broken network would; ``expire_watches(resource)`` makes the next watch
of that resource get a ``410 Gone`` ERROR event. Thread-safe.
"""

from __future__ import annotations

import dataclasses
import threading

from scanqueue.sim import apierrors

_REASONS = {
    403: ("Forbidden", "forbidden: injected fault: the user may not do this"),
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: injected fault"),
    503: ("ServiceUnavailable", "The server is currently unable to handle the request"),
    504: ("Timeout", "The server was unable to return a response in the time allotted"),
}


@dataclasses.dataclass
class Rule:
    status: int
    verb: str | None  # None matches every verb
    resource: str | None  # "pods", "pods/log", "jobs"; None matches every resource
    remaining: int  # requests still to fail; -1 = until cleared
    retry_after: float | None


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._gone: dict[str, int] = {}
        self.watch_generation = 0  # bumped to cut open watches
        self.injected = 0  # how many requests were failed on purpose

    def fail(
        self,
        status: int,
        *,
        verb: str | None = None,
        resource: str | None = None,
        count: int = 1,
        retry_after: float | None = 1,
    ) -> None:
        """Fail the next ``count`` requests matching ``verb``/``resource`` (-1: until ``clear``)."""
        if status not in _REASONS:
            raise ValueError(f"status {status} is not one of {sorted(_REASONS)}")
        with self._lock:
            self._rules.append(Rule(status, verb, resource, count, retry_after))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._gone.clear()

    def drop_watches(self) -> None:
        """Cut every watch open now (the client sees the connection end abruptly)."""
        self.watch_generation += 1

    def expire_watches(self, resource: str, count: int = 1) -> None:
        """The next ``count`` watches of ``resource`` get a 410 Gone ERROR event at once."""
        with self._lock:
            self._gone[resource] = self._gone.get(resource, 0) + count

    def take_gone(self, resource: str) -> bool:
        with self._lock:
            left = self._gone.get(resource, 0)
            if left <= 0:
                return False
            self._gone[resource] = left - 1
            return True

    def check(self, verb: str, resource: str) -> None:
        """Raise the injected ``ApiError`` when a rule matches this request."""
        with self._lock:
            for rule in self._rules:
                if rule.verb not in (None, verb) or rule.resource not in (None, resource):
                    continue
                if rule.remaining == 0:
                    continue
                if rule.remaining > 0:
                    rule.remaining -= 1
                self.injected += 1
                reason, message = _REASONS[rule.status]
                raise apierrors.ApiError(
                    rule.status,
                    reason,
                    message,
                    retry_after=rule.retry_after if rule.status in (429, 503) else None,
                )
