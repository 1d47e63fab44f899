"""Every benchmark module runs end to end on tiny sizes, so a broken ``make bench`` fails CI.

Speed is never asserted here (it belongs to ``make bench``); what is asserted
is what the benchmarks count: one scan Job per digest, the API requests a
scan costs, rows stored, tasks published. Each module starts its own private
Redis and PostgreSQL on loopback and stops them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench import api_cost, dedupe, ingest, pipeline, watcher

pytestmark = pytest.mark.slow


def test_dedupe_bench_creates_one_scan_job_per_digest_not_per_workload() -> None:
    result = dedupe.run(pods=24, workloads=8, digests=3, rounds=1)
    assert result["scan_jobs"] == {"scanqueue": 3, "one_per_workload": 8, "ratio": 2.7}
    assert result["tasks_published"] == 3
    assert result["met"] is True


def test_api_cost_bench_counts_seven_requests_per_credentialed_scan_plus_two_per_pass() -> None:
    result = api_cost.run(pods=8, workloads=4, digests=4, rounds=1)
    assert result["scans"] == 4
    # submit: read the pull secret, create Job, create Secret, resume the Job (the in-flight
    # cap is a Redis slot, and an existing Job comes back from the create's 409)
    assert result["submit_per_scan"] == {
        "create jobs": 1.0, "create secrets": 1.0, "get secrets": 1.0, "patch jobs": 1.0,
    }  # fmt: skip
    # collect: the log, the Job's and the Secret's deletion per scan; one Job list and one
    # pod list per pass (all four Jobs are collected in one pass here)
    assert result["collect_per_scan"] == {
        "delete jobs": 1.0, "delete secrets": 1.0, "get pods/log": 1.0, "list jobs": 0.25,
        "list pods": 0.25,
    }  # fmt: skip
    assert result["requests_per_scan"]["median"] == 7.5


def test_ingest_bench_stores_every_finding_with_both_methods() -> None:
    result = ingest.run(rounds=2, repeats=1, farm=(1_000, 20), farm_repeats=1)
    assert result["findings_per_report"] == 212
    farm = result["farm_database"]
    assert (farm["advisories"], farm["findings"]) == (1_000, 20 * ingest.FARM_FINDINGS_PER_SCAN)
    for figures in (result, farm):
        for method in ("set", "insert"):
            assert figures[method]["finding_rows_per_second"]["runs"] == 1
            assert figures[method]["client_cpu_ms_per_report"]["median"] > 0
        assert figures["set_speedup"]["median"] > 0


def test_pipeline_bench_stores_every_scan_through_real_processes_under_a_small_cap() -> None:
    """Sized so that scans waiting for a slot matter: 60 digests, 2 in flight at most.

    With the old retry-on-a-timer (every waiting scan re-sent about once a second) this
    cost hundreds of scan-task messages and ran out of its timeout; waiting scans now
    cost one more message each at most.
    """
    result = pipeline.run(digests=60, configs=(("2_worker_cap_2", 2, 2),), repeats=1,
                          timeout=120)  # fmt: skip
    assert result["digests"] == 60
    figures = result["2_worker_cap_2"]
    assert figures["scans_per_second"]["runs"] == 1
    assert figures["most_jobs_at_once"]["max"] <= 2
    assert figures["scan_task_messages_per_scan"]["max"] <= 3


def test_watcher_bench_publishes_one_task_per_digest_and_measures_rss() -> None:
    result = watcher.run(pods=30, workloads=6, digests=3, repeats=1, timeout=60)
    assert result["pods"] == 30
    assert result["peak_rss_mb"]["median"] > 0
    assert result["published_seconds"]["runs"] == 1


def test_bench_runner_reports_a_failing_module_and_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_main, "RESULTS", tmp_path / "results.json")
    monkeypatch.setattr(ingest, "run", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert bench_main.main(["ingest"]) == 1
    written = json.loads((tmp_path / "results.json").read_text())
    assert "boom" in written["ingest"]["error"]
    # how fast the machine ran, before and after, to compare runs taken apart
    assert written["machine"]["loop_ms_before"] > 0 and written["machine"]["loop_ms_after"] > 0
    assert "CPU ms per reference loop" in bench_main.table(written)
