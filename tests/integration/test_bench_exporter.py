"""bench/exporter.py runs end to end on a tiny inventory (speed is for ``make bench``)."""

from __future__ import annotations

import pytest

from bench import exporter

pytestmark = pytest.mark.slow


def test_exporter_bench_exports_ten_series_per_workload_with_findings() -> None:
    result = exporter.run(containers=50, digests=4, scrapes=3, repeats=1)
    assert result["workloads"] == 10
    # every workload runs a scanned digest with findings: 5 severities x fixable yes/no,
    # plus 3 image states x 2 clusters, 2 oldest-scan ages, 3 alert delivery states and 4
    # exporter health samples
    assert result["series"] == 10 * 10 + 6 + 2 + 3 + 4
    assert result["scrape_ms_cached"]["runs"] == 1
