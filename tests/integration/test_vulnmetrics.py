"""``scanqueue exporter`` against a real PostgreSQL: the metrics equal ``report --format json``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scanqueue import cli, reports, store, vulnmetrics
from scanqueue.store import overview
from tests.support import results_fixtures as inv


@pytest.fixture
def inventory_url(database_url: str, trivy_reports: dict[str, reports.Report]) -> str:
    with store.connect(database_url) as conn:
        inv.build_inventory(conn, trivy_reports)
        conn.commit()
    return database_url


@pytest.fixture
def exporter(inventory_url: str) -> Iterator[str]:
    """The real command, as a subprocess on a free loopback port; yields its /metrics URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanqueue.cli", "exporter", "--port", "0", "--ttl", "0.2",
         "--database-url", inventory_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), line + (
            proc.stderr.read() if proc.stderr else ""
        )
        yield line.split()[1]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name].append((dict(sample.labels), sample.value))
    return out


def test_metrics_endpoint_counts_equal_the_json_report(
    exporter: str, inventory_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["report", "--database-url", inventory_url, "--format", "json"]) == 0
    expected = {
        (r["cluster"], r["namespace"], r["workload"]): r
        for r in json.loads(capsys.readouterr().out)
    }
    samples = scrape(exporter)
    got: dict[tuple[str, str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in samples["scanqueue_workload_vulnerabilities"]:
        key = (
            labels["cluster"],
            labels["namespace"],
            f"{labels['workload_kind']}/{labels['workload']}",
        )
        got[key][labels["severity"].lower()] += value
        got[key]["total"] += value
        if labels["fixable"] == "true":
            got[key]["fixable"] += value
    assert set(got) == set(expected)
    for key, row in expected.items():
        for column in ("critical", "high", "medium", "low", "unknown", "fixable", "total"):
            assert got[key][column] == row[column], (key, column)
    assert samples["scanqueue_vulnmetrics_up"] == [({}, 1.0)]


def test_image_states_and_oldest_scan_age(exporter: str) -> None:
    samples = scrape(exporter)
    states = {(l["cluster"], l["state"]): v for l, v in samples["scanqueue_images"]}  # noqa: E741
    # prod-eu runs WEB (scanned), API (its last scan failed), DB (never scanned),
    # JOB (refused); prod-us runs WEB and one container whose digest is not known yet.
    assert states == {
        ("prod-eu", "scanned"): 1, ("prod-eu", "failing"): 2, ("prod-eu", "unscanned"): 1,
        ("prod-us", "scanned"): 1, ("prod-us", "failing"): 0, ("prod-us", "unscanned"): 1,
    }  # fmt: skip
    ages = {l["cluster"]: v for l, v in samples["scanqueue_oldest_scan_age_seconds"]}  # noqa: E741
    now = datetime.now(UTC)
    # the oldest latest-success of prod-eu is s-api-2 and s-web (a day before T0)
    expected_age = (now - (inv.T0 - timedelta(days=1))).total_seconds()
    assert abs(ages["prod-eu"] - expected_age) < 120
    assert abs(ages["prod-us"] - expected_age) < 120


def test_no_label_carries_an_advisory_package_or_digest(exporter: str) -> None:
    samples = scrape(exporter)
    for name, series in samples.items():
        for labels, _ in series:
            assert set(labels) <= {"cluster", "namespace", "workload_kind", "workload", "severity",
                                   "fixable", "state"}, name  # fmt: skip
            assert not any(v.startswith(("CVE-", "sha256:", "GHSA-")) for v in labels.values())


def test_cache_runs_the_queries_once_per_ttl_however_many_scrapes(inventory_url: str) -> None:
    with store.connect(inventory_url) as conn:
        calls = []

        def fetch() -> overview.Snapshot:
            calls.append(1)
            return overview.snapshot(conn)

        now = [0.0]
        cache = vulnmetrics.Cache(fetch, ttl_seconds=10, clock=lambda: now[0])
        first = cache.text()
        for _ in range(20):
            assert cache.text() == first
        assert len(calls) == 1
        now[0] = 10.5
        assert cache.text() == first  # served at once; the refresh runs in the background
        wait_until(lambda: cache.refreshes == 2)
        assert len(calls) == 2
        for _ in range(20):
            cache.text()
        assert len(calls) == 2  # fresh again until the next ttl


def test_a_database_that_goes_away_serves_the_last_numbers_marked_stale(
    inventory_url: str,
) -> None:
    state = {"fail": False}
    with store.connect(inventory_url) as conn:

        def fetch() -> overview.Snapshot:
            if state["fail"]:
                raise store_error()
            return overview.snapshot(conn)

        now = [0.0]
        cache = vulnmetrics.Cache(fetch, ttl_seconds=1, clock=lambda: now[0])
        good = cache.text()
        state["fail"], now[0] = True, 2.0
        assert cache.text() == good  # served while the background refresh fails
        wait_until(lambda: cache.refreshes == 2)
        stale = cache.text()
    assert "scanqueue_vulnmetrics_up 1" in good and "scanqueue_vulnmetrics_up 0" in stale
    assert "scanqueue_vulnmetrics_refresh_errors_total 1" in stale
    pick = [line for line in good.splitlines() if line.startswith("scanqueue_workload_vuln")]
    assert pick and all(line in stale.splitlines() for line in pick)


def wait_until(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def store_error() -> Exception:
    from scanqueue import errors

    return errors.TemporaryError("Postgres, in store.snapshot: connection refused")
