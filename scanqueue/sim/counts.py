"""Requests the emulator served, by (verb, resource): what tests count API cost with."""

from __future__ import annotations

import collections
import threading


class RequestCounts:
    """A thread-safe counter of requests by (verb, resource): ("list", "pods")."""

    def __init__(self) -> None:
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()

    def count(self, verb: str, resource_name: str) -> None:
        with self._lock:
            self._counts[(verb, resource_name)] += 1

    def snapshot(self) -> collections.Counter[tuple[str, str]]:
        with self._lock:
            return collections.Counter(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
