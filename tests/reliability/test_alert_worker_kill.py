"""A worker SIGKILLed in the middle of a webhook POST: the notification is still delivered.

The deliver task is late-acked, and the dispatch pass hands out again a delivery
whose lease ran out (2 x timeout + 30 s), so a new worker sends it. Delivery is
at least once: the receiver may see the one that was cut off, then the resend.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from scanqueue import store
from tests.integration import test_alerts as scenario
from tests.support import alert_fixtures as af
from tests.support.worker_fixtures import WorkerProcess


def test_a_delivery_cut_off_by_sigkill_is_sent_by_the_next_worker(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    receiver = af.Receiver(behaviour="slow", delay=4.0).start()
    try:
        config = tmp_path / "scanqueue.toml"
        config.write_text(
            f"""
[database]
url = "{database_url}"
[broker]
url = "{redis_url}"
[alerts]
generic_urls = ["http://127.0.0.1:{receiver.port}/hook"]
timeout_seconds = 6.0
max_attempts = 3
retry_base_seconds = 0.5
interval_seconds = 0.5
"""
        )
        now = datetime.now(UTC)
        with store.connect(database_url) as conn:
            scenario.inventory(conn, now)
            scenario.scan(conn, "s1", scenario.D1, af.report("r/web:1", scenario.R1), now)
            first = worker_factory(config, queues=["scanqueue.control"], beat=True)
            deadline = time.monotonic() + 60
            while not receiver.requests:  # a POST is in flight: the handler sleeps 4 s
                assert time.monotonic() < deadline, first.tail()
                time.sleep(0.05)
            first.kill()
            receiver.behaviour = "ok"
            second = worker_factory(config, queues=["scanqueue.control"], beat=True)
            scenario.wait(lambda: scenario.settled(conn, 2), "both deliveries sent", second, 120)
            rows = scenario.deliveries(conn)
        assert [r[3] for r in rows] == ["sent", "sent"]
        assert max(r[4] for r in rows) == 2  # the cut-off delivery was claimed again
        workloads = sorted(r.json()["workload"]["name"] for r in receiver.requests)
        assert set(workloads) == {"api", "web"}
        assert len(workloads) <= 3  # the cut-off POST at most once more
    finally:
        receiver.stop()
