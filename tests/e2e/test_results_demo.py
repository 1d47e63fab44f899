"""After the demo: the exporter's metrics and the HTML report show the JSON report's numbers.

``scanqueue run`` on the embedded default (the demo cluster on the emulator,
a private registry, real workers) until every image is scanned; then the
``findings`` URL it prints (its exporter role) must count, per workload and
severity, what ``scanqueue report --format json`` counts, and the HTML report
must open in headless Chromium with the same totals (screenshot in
build/test-artifacts/demo-report.png).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_report_html import ARTIFACTS, PAGE_DATA
from tests.support import chromium, services
from tests.support.run_fixtures import FarmCommand

COUNTS = ("critical", "high", "medium", "low", "unknown", "fixable", "total")


@pytest.fixture
def browser() -> Iterator[chromium.Chromium]:
    with services.tempdir("sq-chromium-") as tmp:
        b = chromium.Chromium(tmp).start()
        try:
            yield b
        finally:
            b.stop()


def cli(config_file: str, *argv: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANQUEUE_")}
    done = subprocess.run(
        [sys.executable, "-m", "scanqueue.cli", *argv],
        env={**env, "SCANQUEUE_CONFIG": config_file},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def metric_totals(url: str) -> dict[tuple[str, str, str], dict[str, float]]:
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    got: dict[tuple[str, str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name != "scanqueue_workload_vulnerabilities":
                continue
            key = (s.labels["cluster"], s.labels["namespace"],
                   f"{s.labels['workload_kind']}/{s.labels['workload']}")  # fmt: skip
            got[key][s.labels["severity"].lower()] += s.value
            got[key]["total"] += s.value
            if s.labels["fixable"] == "true":
                got[key]["fixable"] += s.value
    return {k: dict(v) for k, v in got.items()}


def test_after_the_demo_metrics_and_html_report_equal_the_json_report(
    farm_command: Callable[..., FarmCommand], browser: chromium.Chromium, tmp_path: Path
) -> None:
    command = farm_command("run", "--flower-unauthenticated")
    findings_url = command.wait_line(r"^\s+findings\s+(http://\S+/metrics)").group(1)
    config_file = command.wait_line(r"report\s+SCANQUEUE_CONFIG=(\S+) scanqueue report").group(1)
    command.wait_line(r"5/5 images scanned", timeout=180)

    expected = {
        (r["cluster"], r["namespace"], r["workload"]): {c: float(r[c]) for c in COUNTS}
        for r in json.loads(cli(config_file, "report", "--format", "json"))
    }
    assert len(expected) == 4 and all(v["total"] > 0 for v in expected.values())
    # the exporter refreshes in the background: wait for it to have seen the last scan
    deadline = time.monotonic() + 60
    while (got := metric_totals(findings_url)) != expected:
        assert time.monotonic() < deadline, f"metrics {got} != report {expected}"
        time.sleep(1)

    page = tmp_path / "demo-report.html"
    page.write_text(cli(config_file, "report", "--format", "html"))
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable")
    browser.send("Page.navigate", {"url": page.as_uri()})
    browser.wait_for("Page.loadEventFired")
    data = json.loads(browser.evaluate(PAGE_DATA))
    browser.screenshot(ARTIFACTS / "demo-report.png")
    assert data["totals"] == {c: sum(int(v[c]) for v in expected.values()) for c in COUNTS}
    assert len(data["workloads"]) == 4
    assert browser.console_errors() == []
    assert browser.requested_urls() == [page.as_uri()]

    command.proc.send_signal(signal.SIGTERM)
    assert command.wait(90) == 0, command.errors()
