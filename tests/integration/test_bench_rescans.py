"""``make bench``'s rescan module runs end to end on tiny sizes (speed is never asserted)."""

from __future__ import annotations

import pytest

from bench import rescans

pytestmark = pytest.mark.slow


def test_rescan_bench_rescans_every_digest_with_no_api_request_and_no_secret() -> None:
    result = rescans.run(digests=3, repeats=1)
    assert result["sboms_stored"] == 3
    assert result["full_secrets_per_scan"] == 1.0  # one credential Secret per full scan
    assert result["full_api_requests_per_scan"] > 0
    assert result["rescan_api_requests_per_rescan"] == 0.0
    assert result["rescan_secrets_per_rescan"] == 0.0
    assert result["rescans_per_second_1"]["runs"] == 1
    assert result["rescans_per_second_2"]["runs"] == 1
    assert result["sbom_bytes_per_digest"]["stored_gzip"] > 0
    assert result["met"] is True
