"""The supervisor's backoff and crash-loop rules (pure functions; the processes are in
tests/integration/test_supervisor.py)."""

from __future__ import annotations

from scanqueue import supervisor

POLICY = supervisor.Policy(
    first_delay_seconds=1.0, max_delay_seconds=30.0, max_crashes=5, window_seconds=300.0
)


def test_backoff_doubles_with_each_recent_crash_up_to_the_cap() -> None:
    assert [supervisor.delay(n, POLICY) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_crashes_older_than_the_window_are_forgotten() -> None:
    crashes = [0.0, 100.0, 250.0, 400.0]
    assert supervisor.recent(crashes, now=420.0, window=300.0) == [250.0, 400.0]


def test_the_fifth_crash_within_the_window_is_a_crash_loop() -> None:
    assert not supervisor.gives_up(4, POLICY)
    assert supervisor.gives_up(5, POLICY)
