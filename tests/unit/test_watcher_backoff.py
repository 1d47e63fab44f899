"""The watch loop's jittered exponential backoff."""

from __future__ import annotations

import random

from scanqueue import watcher


def test_backoff_grows_exponentially_with_jitter_up_to_the_maximum() -> None:
    backoff = watcher.Backoff(0.5, 8.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(8)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered: watchers do not retry in lockstep


def test_backoff_resets_after_success() -> None:
    backoff = watcher.Backoff(1.0, 60.0, rng=random.Random(1))
    for _ in range(5):
        backoff.next()
    backoff.reset()
    assert backoff.next() <= 1.0


def test_retry_after_from_the_server_is_a_lower_bound() -> None:
    backoff = watcher.Backoff(0.5, 8.0, rng=random.Random(3))
    assert backoff.next(hint=20.0) == 20.0
    assert backoff.next(hint=None) <= 1.0
