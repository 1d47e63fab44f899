"""How the watch loop paces itself: its options, and the backoff between attempts."""

from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass(frozen=True)
class WatchOptions:
    """How the watch loop paces itself. Defaults suit production; tests shorten them."""

    flush_interval_seconds: float = 1.0  # inventory and tasks are written this often
    flush_rows: int = 500  # ...or as soon as this many container rows wait
    reevaluate_interval_seconds: float = 60.0  # known digests re-checked for rescans/turns
    watch_timeout_seconds: int = 240  # server-side timeoutSeconds of one watch request
    backoff_initial_seconds: float = 0.5  # first wait after an error
    backoff_max_seconds: float = 30.0  # longest wait between attempts
    owner_reads: int = 8  # ReplicaSets/Jobs read at once after a list


class Backoff:
    """Jittered exponential backoff; a server's ``Retry-After`` is a lower bound."""

    def __init__(self, initial: float, maximum: float, *, rng: random.Random | None = None) -> None:
        self._initial, self._maximum = initial, maximum
        self._failures = 0
        self._rng = rng or random.Random()

    def next(self, hint: float | None = None) -> float:
        """The wait before the next attempt (grows with each call until ``reset``)."""
        ceiling = min(self._maximum, self._initial * (2**self._failures))
        self._failures += 1
        delay = ceiling * self._rng.uniform(0.5, 1.0)
        return float(max(delay, hint or 0.0))

    def reset(self) -> None:
        self._failures = 0


DEFAULT_OPTIONS = WatchOptions()  # the production pacing
