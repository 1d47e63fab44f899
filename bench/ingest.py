"""Report ingest: finding rows per second with COPY against a row-by-row INSERT baseline.

Starts a private PostgreSQL (tests/support/services.PostgresServer, fsync off),
then stores the 212-finding Trivy report ``rounds`` times per method through
``store.finish_scan`` (one transaction per report, the vulnerability upsert
included), each time as a new scan. Only ``finish_scan`` is timed. Each of
``repeats`` runs uses a fresh database and interleaves the methods in blocks,
so the ratio is taken within one run (the machine is shared and noisy).
``parallel`` also stores reports from two connections at once (a farm has
several workers; this machine has two cores) and reports the total rate.
"""

from __future__ import annotations

import statistics
import threading
import time
from datetime import UTC, datetime
from typing import Any, Literal

from bench import _world
from scanqueue import reports, store

REPORT = _world.REPORT
ROUNDS = _world.env_int("INGEST_ROUNDS", 60)  # reports per method per run
REPEATS = _world.env_int("INGEST_REPEATS", 5)
WARMUP = 5
BLOCK = 10  # reports stored with one method before switching to the other
TARGET_ROWS = 50_000
TARGET_SPEEDUP = 10.0

Method = Literal["copy", "insert"]


class _Scans:
    """Numbers new scans uniquely within one database."""

    def __init__(self) -> None:
        self._n = 0
        self._lock = threading.Lock()

    def new(self, conn: store.Connection, method: str) -> str:
        with self._lock:
            self._n += 1
            n = self._n
        digest = f"sha256:{n:064x}"
        scan_id = f"bench-{method}-{n}"
        store.start_scan(
            conn, scan_id=scan_id, cluster="bench", digest=digest,
            image=f"registry.example.com/bench/app@{digest}", mode="registry", attempt=1,
            credential_source=None, started_at=datetime.now(UTC),
        )  # fmt: skip
        return scan_id


def _store(conn: store.Connection, scans: _Scans, report: reports.Report, method: Method) -> float:
    scan_id = scans.new(conn, method)
    started = time.perf_counter()
    store.finish_scan(
        conn, scan_id=scan_id, report=report, finished_at=datetime.now(UTC), findings_via=method
    )
    return time.perf_counter() - started


def _one_run(url: str, report: reports.Report, rounds: int) -> dict[str, list[float]]:
    """Seconds per report, per method, interleaved in blocks of ``BLOCK``."""
    scans = _Scans()
    seconds: dict[str, list[float]] = {"copy": [], "insert": []}
    with store.connect(url) as conn:
        for method in ("copy", "insert"):
            for _ in range(WARMUP):
                _store(conn, scans, report, method)
        done = 0
        while done < rounds:
            block = min(BLOCK, rounds - done)
            for method in ("copy", "insert"):
                for _ in range(block):
                    seconds[method].append(_store(conn, scans, report, method))
            done += block
        stored = conn.execute("SELECT count(*) FROM findings").fetchone()
    expected = len(report.findings) * 2 * (WARMUP + rounds)
    if stored is None or stored[0] != expected:
        raise RuntimeError(f"stored {stored} finding rows, expected {expected}")
    return seconds


def _parallel(url: str, report: reports.Report, rounds: int, writers: int) -> float:
    """Finding rows per second, all writers together, storing with COPY at the same time."""
    scans = _Scans()
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers + 1)

    def write() -> None:
        try:
            with store.connect(url) as conn:
                _store(conn, scans, report, "copy")
                barrier.wait()
                for _ in range(rounds):
                    _store(conn, scans, report, "copy")
        except BaseException as e:  # reported below, the run fails
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"parallel ingest failed: {errors[0]!r}")
    return len(report.findings) * rounds * writers / elapsed


def run(*, rounds: int = ROUNDS, repeats: int = REPEATS, writers: int = 2) -> dict[str, Any]:
    report = reports.parse_file(REPORT)
    findings = len(report.findings)
    rates: dict[str, list[float]] = {"copy": [], "insert": []}
    median_ms: dict[str, list[float]] = {"copy": [], "insert": []}
    speedups: list[float] = []
    parallel: list[float] = []
    with _world.running_services() as svc:
        for _ in range(repeats):
            seconds = _one_run(svc.database(), report, rounds)
            for method, values in seconds.items():
                rates[method].append(findings * len(values) / sum(values))
                median_ms[method].append(statistics.median(values) * 1000)
            speedups.append(rates["copy"][-1] / rates["insert"][-1])
            parallel.append(_parallel(svc.database(), report, rounds, writers))
    result: dict[str, Any] = {
        "report": REPORT.name,
        "findings_per_report": findings,
        "reports_per_method_per_run": rounds,
    }
    for method in ("copy", "insert"):
        result[method] = {
            "finding_rows_per_second": _world.summary(rates[method], digits=0),
            "ms_per_report": _world.summary(median_ms[method]),
        }
    result["copy_speedup"] = _world.summary(speedups, digits=1)
    result[f"copy_{writers}_writers_rows_per_second"] = _world.summary(parallel, digits=0)
    copy_rate = result["copy"]["finding_rows_per_second"]["median"]
    result["target"] = f">= {TARGET_ROWS} finding rows/s and >= {TARGET_SPEEDUP:g}x INSERT"
    result["met"] = copy_rate >= TARGET_ROWS and result["copy_speedup"]["median"] >= TARGET_SPEEDUP
    print(
        f"  copy: {copy_rate:.0f} rows/s ({result['copy']['ms_per_report']['median']} ms/report), "
        f"insert: {result['insert']['finding_rows_per_second']['median']:.0f} rows/s, "
        f"speedup {result['copy_speedup']['median']}x, {writers} writers: "
        f"{result[f'copy_{writers}_writers_rows_per_second']['median']:.0f} rows/s",
        flush=True,
    )
    return result
