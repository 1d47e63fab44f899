"""``scanqueue report --format html`` opened in a real headless Chromium (Debian's package).

The page must render, show the numbers ``scanqueue report --format json``
gives, log no console error (a blocked fetch would be one, through the page's
Content-Security-Policy), request nothing but itself, fit a laptop screen and
print. A screenshot is kept in build/test-artifacts/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanqueue import cli, reports, store
from tests.support import chromium, services
from tests.support import results_fixtures as inv

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"

PAGE_DATA = """JSON.stringify({
  title: document.title,
  totals: Object.fromEntries([...document.querySelectorAll('[data-total]')]
            .map(e => [e.dataset.total, Number(e.textContent)])),
  workloads: [...document.querySelectorAll('tr.workload')]
            .map(tr => [...tr.children].map(td => td.textContent)),
  bars: [...document.querySelectorAll('rect.bar')]
            .map(r => [r.dataset.cluster, r.dataset.severity, Number(r.dataset.count)]),
  sections: Object.fromEntries(['fixable', 'changes', 'unscanned']
            .map(id => [id, [...document.querySelectorAll('tr.' + id)]
            .map(tr => [...tr.children].map(td => td.textContent))])),
  scrollWidth: document.documentElement.scrollWidth,
})"""


@pytest.fixture
def browser() -> Iterator[chromium.Chromium]:
    with services.tempdir("sq-chromium-") as tmp:
        b = chromium.Chromium(tmp).start()
        try:
            yield b
        finally:
            b.stop()


@pytest.fixture
def inventory_url(database_url: str, trivy_reports: dict[str, reports.Report]) -> str:
    with store.connect(database_url) as conn:
        inv.build_inventory(conn, trivy_reports)
        conn.commit()
    return database_url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main(list(argv)) == 0
    return capsys.readouterr().out


def open_page(browser: chromium.Chromium, page: Path) -> dict[str, object]:
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable")
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1366, "height": 768, "deviceScaleFactor": 1, "mobile": False},
    )
    browser.send("Page.navigate", {"url": page.as_uri()})
    browser.wait_for("Page.loadEventFired")
    data: dict[str, object] = json.loads(browser.evaluate(PAGE_DATA))
    return data


def test_html_report_renders_in_chromium_with_the_json_reports_numbers(
    inventory_url: str,
    browser: chromium.Chromium,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    page = tmp_path / "report.html"
    page.write_text(run(capsys, "report", "--format", "html", "--database-url", inventory_url))
    expected = json.loads(
        run(capsys, "report", "--format", "json", "--database-url", inventory_url)
    )

    data = open_page(browser, page)
    browser.screenshot(ARTIFACTS / "html-report.png")

    assert data["title"] == "scanqueue report"
    counts = ("critical", "high", "medium", "low", "unknown", "fixable", "total")
    assert data["totals"] == {c: sum(r[c] for r in expected) for c in counts}
    assert data["workloads"] == [
        [str(r[c]) for c in ("cluster", "namespace", "workload", *counts)] for r in expected
    ]
    bars: dict[tuple[str, str], int] = {(c, s): n for c, s, n in data["bars"]}  # type: ignore[misc,attr-defined]
    for cluster in {r["cluster"] for r in expected}:
        for sev in ("critical", "high", "medium", "low", "unknown"):
            want = sum(r[sev] for r in expected if r["cluster"] == cluster)
            assert bars.get((cluster, sev), 0) == want, (cluster, sev)

    sections = data["sections"]
    assert isinstance(sections, dict)
    fixable = {tuple(r[3:8]) for r in sections["fixable"]}
    assert fixable and all(r[4] and r[1] in ("CRITICAL", "HIGH") for r in fixable)
    assert {r[0] for r in sections["changes"]} == {"new", "resolved"}  # team/api rebuilt
    reasons = " | ".join(r[5] for r in sections["unscanned"])
    assert "never scanned" in reasons and "registry timed out" in reasons
    assert "digest not known yet" in reasons

    assert browser.console_errors() == []
    assert browser.requested_urls() == [page.as_uri()]  # the page itself, nothing else
    assert data["scrollWidth"] <= 1366  # no horizontal scrolling on a laptop screen
    pdf = browser.send("Page.printToPDF", {"printBackground": True})
    assert len(pdf["data"]) > 1000


def test_a_page_that_fetched_something_would_fail_this_test(
    browser: chromium.Chromium, tmp_path: Path
) -> None:
    """The checks above can fail: a page with an external image shows a request and an error."""
    from scanqueue.cli import html

    port = services.free_port()  # nothing listens there
    page = tmp_path / "bad.html"
    good = html.render(_empty_overview())
    page.write_text(good.replace("</body>", f'<img src="http://127.0.0.1:{port}/x.png"></body>'))
    open_page(browser, page)
    browser.evaluate("new Promise(r => setTimeout(r, 300))")
    assert browser.console_errors()  # refused by the Content-Security-Policy


def _empty_overview() -> object:
    from datetime import UTC, datetime

    from scanqueue.store import overview

    empty = overview.Section(("a",), (), 0)
    return overview.Overview(
        generated_at=datetime.now(UTC),
        workloads=store.ReportTable(("cluster",), ()),
        fixable=empty,
        changes=empty,
        unscanned=empty,
    )
