"""A burst: 300 digests at once on a cluster capped at 5 scan Jobs, 2 real worker processes.

The farm's first start on a cluster with many images is exactly this. What
must hold: every scan is stored, never more than 5 scan Jobs exist at once
(seen through a watch on the emulator), and waiting costs nothing: at most 3
scan-task messages per digest reach the workers (counted by the workers as
they receive them), however long each scan waits for its slot; and the collect
task that frees a slot submits the next waiting scan itself (about 2 broker
messages per digest in all, not 3). The old design retried every waiting scan
about once a second and did not finish this.
"""

from __future__ import annotations

import pytest

from bench import _world, pipeline
from tests.support import services

pytestmark = pytest.mark.slow

DIGESTS = 300
CAP = 5


def test_a_burst_of_300_digests_under_max_inflight_5_finishes_and_waiting_costs_nothing() -> None:
    with (
        _world.running_services() as svc,
        services.tempdir("sq-test-burst-") as directory,
    ):
        result = pipeline.run_once(
            svc, directory, digests=DIGESTS, workers=2, max_inflight=CAP, timeout=240
        )
    # run_once raises unless every digest has a succeeded scan and one Job each
    assert result["most_jobs_at_once"] <= CAP, result
    assert result["most_jobs_at_once"] == CAP, result  # the cap was reached, not avoided
    assert result["scan_task_messages_per_scan"] <= 3.0, result
    assert result["scan_task_messages_per_scan"] >= 1.0, result
    # a waiting scan is submitted by the collect task that freed its slot, in that task: one
    # scan task and one collect_job per digest (the slack: the periodic pass, redeliveries)
    assert result["broker_messages_per_scan"] <= 2.5, result
