"""Report ingest: finding rows per second with COPY against a row-by-row INSERT baseline.

Starts a private PostgreSQL (tests/support/services.PostgresServer), then stores
the 212-finding Trivy report ``ROUNDS`` times per method through
``store.finish_scan`` (one transaction per report, the vulnerability upsert
included), each time as a new scan. Only ``finish_scan`` is timed.
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from scanqueue import reports, store
from tests.support import services

REPORT = Path(__file__).parents[1] / "tests" / "data" / "trivy" / "python-debian-12-bom-crlf.json"
ROUNDS = int(os.environ.get("BENCH_INGEST_ROUNDS", "100"))
WARMUP = 5


def _ingest(
    conn: store.Connection, report: reports.Report, method: Literal["copy", "insert"], rounds: int
) -> list[float]:
    now = datetime.now(UTC)
    seconds = []
    for i in range(WARMUP + rounds):
        scan_id = f"bench-{method}-{i}"
        digest = f"sha256:{i:064x}"
        store.start_scan(
            conn, scan_id=scan_id, cluster="bench", digest=digest,
            image=f"registry.example.com/bench/app@{digest}", mode="registry", attempt=1,
            credential_source=None, started_at=now,
        )  # fmt: skip
        started = time.perf_counter()
        store.finish_scan(
            conn, scan_id=scan_id, report=report, finished_at=now, findings_via=method
        )
        if i >= WARMUP:
            seconds.append(time.perf_counter() - started)
    return seconds


def run() -> dict[str, Any]:
    report = reports.parse_file(REPORT)
    findings = len(report.findings)
    result: dict[str, Any] = {"report": REPORT.name, "findings_per_report": findings,
                              "rounds": ROUNDS}  # fmt: skip
    with services.tempdir("sq-bench-pg-") as tmp:
        server = services.PostgresServer(tmp).start()
        try:
            url = server.create_database("bench")
            with store.connect(url) as conn:
                store.migrate(conn)
                conn.commit()
                for method in ("copy", "insert"):
                    seconds = _ingest(conn, report, method, ROUNDS)
                    result[method] = {
                        "finding_rows_per_second": round(findings * len(seconds) / sum(seconds)),
                        "median_ms_per_report": round(statistics.median(seconds) * 1000, 2),
                    }
                    print(
                        f"{method:>6}: {result[method]['finding_rows_per_second']:>8} finding "
                        f"rows/s, {result[method]['median_ms_per_report']} ms per report",
                        flush=True,
                    )
                stored = conn.execute("SELECT count(*) FROM findings").fetchone()
                expected = findings * 2 * (WARMUP + ROUNDS)
                if stored is None or stored[0] != expected:
                    raise RuntimeError(f"stored {stored} finding rows, expected {expected}")
        finally:
            server.stop("immediate")
    result["copy_speedup"] = round(
        result["copy"]["finding_rows_per_second"] / result["insert"]["finding_rows_per_second"], 1
    )
    return result
