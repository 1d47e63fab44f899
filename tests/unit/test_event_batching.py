"""workers.app.Consumer: when task events are flushed (the timing logic alone; the events
reaching a real Flower is tests/integration/test_task_events.py)."""

from __future__ import annotations

from typing import Any

import pytest
from celery import bootsteps

from workers import app


class _Hub:
    def __init__(self) -> None:
        self.scheduled: list[tuple[float, Any]] = []

    def call_later(self, delay: float, callback: Any) -> None:
        self.scheduled.append((delay, callback))


class _Blueprint:
    state = bootsteps.RUN


def _consumer(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, _Hub, list[str]]:
    consumer = object.__new__(app.Consumer)  # no broker: only the flush logic
    hub, flushed = _Hub(), []
    consumer.hub = hub
    consumer.blueprint = _Blueprint()
    monkeypatch.setattr(consumer, "_flush_events", lambda: flushed.append("flush"))
    return consumer, hub, flushed


def test_events_wait_for_one_flush_a_tenth_of_a_second_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer, hub, flushed = _consumer(monkeypatch)
    for _ in range(5):
        consumer.on_send_event_buffered()
    assert [delay for delay, _ in hub.scheduled] == [app.EVENT_FLUSH_SECONDS]
    assert flushed == []
    hub.scheduled[0][1]()
    assert flushed == ["flush"]
    consumer.on_send_event_buffered()  # after the flush, the next event schedules another
    assert len(hub.scheduled) == 2


def test_a_flush_lost_with_its_timer_entry_is_scheduled_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer, hub, _ = _consumer(monkeypatch)
    clock = [1000.0]
    monkeypatch.setattr(app.time, "monotonic", lambda: clock[0])
    consumer.on_send_event_buffered()
    hub.scheduled.clear()  # the entry never runs (a reconnect dropped it)
    clock[0] += 0.5
    consumer.on_send_event_buffered()
    assert hub.scheduled == []  # not overdue yet: the scheduled one may still come
    clock[0] += 1.0
    consumer.on_send_event_buffered()
    assert len(hub.scheduled) == 1


def test_a_stopping_worker_flushes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer, hub, flushed = _consumer(monkeypatch)
    consumer.blueprint.state = bootsteps.CLOSE
    consumer.on_send_event_buffered()
    assert flushed == ["flush"] and hub.scheduled == []
