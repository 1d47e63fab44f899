"""Report ingest: finding rows per second, one statement per report against row-by-row INSERT.

Starts a private PostgreSQL (tests/support/services.PostgresServer, fsync off),
then stores the 212-finding Trivy report ``rounds`` times per method through
``store.finish_scan`` (one transaction per report, the vulnerability upsert
included), each time as a new scan. Only ``finish_scan`` is timed. Each of
``repeats`` runs uses a fresh database and interleaves the methods in blocks,
so the ratio is taken within one run (the machine is shared and noisy).
``parallel`` also stores reports from two connections at once (a farm has
several workers; this machine has two cores) and reports the total rate.
``farm_database``: the same interleaved run on a database that already holds what a
farm's does (100,000 advisories, 5,000 scans with 200 findings each: deep indexes,
real lookups), ``farm_repeats`` times, each on a fresh one.

Wall time on a loaded 2-core machine is mostly waiting for a core, so the CPU
time spent per report is reported too: the client's (this thread) and the
server's (the connection's backend process, from /proc/PID/schedstat, readable
when Postgres runs on this machine as this user or root).
"""

from __future__ import annotations

import statistics
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
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
# A farm's database, for one more run: advisories and scans already stored, with their
# findings (each scan FARM_FINDINGS_PER_SCAN), so that indexes are deep and lookups real.
FARM_ADVISORIES = _world.env_int("INGEST_FARM_ADVISORIES", 100_000)
FARM_SCANS = _world.env_int("INGEST_FARM_SCANS", 5_000)
FARM_FINDINGS_PER_SCAN = 200
FARM_REPEATS = _world.env_int("INGEST_FARM_REPEATS", 2)

Method = Literal["set", "insert"]


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


def _fill_like_a_farm(url: str, advisories: int, scans: int) -> int:
    """Store ``advisories`` advisories and ``scans`` succeeded scans of one image, each with
    FARM_FINDINGS_PER_SCAN findings spread over the advisories; returns the findings stored.

    Plain SQL, not ``finish_scan``: this is the database the measured reports land in, not
    what is measured. The findings' integrity check runs as for any insert."""
    with store.connect(url) as conn:
        seed = _Scans().new(conn, "farm-seed")  # its cluster and image rows
        conn.execute(
            """INSERT INTO vulnerabilities (id, title, severity, url)
               SELECT format('CVE-FARM-%%s', g), 'an advisory of the farm',
                      (ARRAY['CRITICAL', 'HIGH', 'MEDIUM', 'LOW', 'UNKNOWN'])[1 + g %% 5],
                      format('https://avd.aquasec.com/nvd/cve-farm-%%s', g)
                 FROM generate_series(1, %s) AS g""",
            (advisories,),
        )
        conn.execute(
            """INSERT INTO scans (id, digest, cluster_id, image, status, mode, started_at,
                                  finished_at)
               SELECT format('farm-%%s', g), seed.digest, seed.cluster_id, seed.image,
                      'succeeded', 'registry', seed.started_at, seed.started_at
                 FROM scans AS seed, generate_series(1, %s) AS g
                WHERE seed.id = %s""",
            (scans, seed),
        )
        conn.execute(
            """INSERT INTO findings (scan_id, ordinal, vulnerability_id, package,
                                     installed_version, fixed_version, severity, target)
               SELECT format('farm-%%s', s), o,
                      format('CVE-FARM-%%s', 1 + (s * 7919 + o * 104729) %% %s),
                      format('package-%%s', o), '1.0', CASE WHEN o %% 3 = 0 THEN '1.1' ELSE '' END,
                      'MEDIUM', 'app (debian 12.5)'
                 FROM generate_series(1, %s) AS s, generate_series(0, %s) AS o""",
            (advisories, scans, FARM_FINDINGS_PER_SCAN - 1),
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return scans * FARM_FINDINGS_PER_SCAN


def _backend_cpu_ns(pid: int) -> int | None:
    """CPU time of the backend process ``pid`` so far, or ``None`` where it cannot be read."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class _Timings:
    """Per method: seconds per report, and the client's and the server's CPU per report."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {"set": [], "insert": []}
        self.client_cpu: dict[str, float] = {"set": 0.0, "insert": 0.0}
        self.server_cpu: dict[str, float | None] = {"set": 0.0, "insert": 0.0}


def _store(
    conn: store.Connection,
    scans: _Scans,
    report: reports.Report,
    method: Method,
    timings: _Timings | None = None,
) -> float:
    scan_id = scans.new(conn, method)
    pid = conn.info.backend_pid
    server = _backend_cpu_ns(pid)
    client = time.thread_time()
    started = time.perf_counter()
    store.finish_scan(
        conn, scan_id=scan_id, report=report, finished_at=datetime.now(UTC), findings_via=method
    )
    elapsed = time.perf_counter() - started
    if timings is not None:
        timings.seconds[method].append(elapsed)
        timings.client_cpu[method] += time.thread_time() - client
        after = _backend_cpu_ns(pid)
        total = timings.server_cpu[method]
        timings.server_cpu[method] = (
            None if total is None or server is None or after is None
            else total + (after - server) / 1e9
        )  # fmt: skip
    return elapsed


def _one_run(url: str, report: reports.Report, rounds: int) -> _Timings:
    """Timings per method, the methods interleaved in blocks of ``BLOCK`` reports."""
    scans = _Scans()
    timings = _Timings()
    with store.connect(url) as conn:
        for method in ("set", "insert"):
            for _ in range(WARMUP):
                _store(conn, scans, report, method)
        done = 0
        while done < rounds:
            block = min(BLOCK, rounds - done)
            for method in ("set", "insert"):
                for _ in range(block):
                    _store(conn, scans, report, method, timings)
            done += block
        stored = conn.execute(
            "SELECT count(*) FROM findings WHERE scan_id LIKE 'bench-%'"  # not a farm's
        ).fetchone()
    expected = len(report.findings) * 2 * (WARMUP + rounds)
    if stored is None or stored[0] != expected:
        raise RuntimeError(f"stored {stored} finding rows, expected {expected}")
    return timings


def _parallel(url: str, report: reports.Report, rounds: int, writers: int) -> float:
    """Finding rows per second, all writers together, storing one statement per report at once."""
    scans = _Scans()
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers + 1)

    def write() -> None:
        try:
            with store.connect(url) as conn:
                _store(conn, scans, report, "set")
                barrier.wait()
                for _ in range(rounds):
                    _store(conn, scans, report, "set")
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


class _Figures:
    """Per method, one value per run: rows/s, median ms, client and server CPU ms per report."""

    def __init__(self, findings: int) -> None:
        self._findings = findings
        self.rates: dict[str, list[float]] = {"set": [], "insert": []}
        self.median_ms: dict[str, list[float]] = {"set": [], "insert": []}
        self.client_ms: dict[str, list[float]] = {"set": [], "insert": []}
        self.server_ms: dict[str, list[float]] = {"set": [], "insert": []}
        self.speedups: list[float] = []

    def add(self, timings: _Timings) -> None:
        for method, values in timings.seconds.items():
            self.rates[method].append(self._findings * len(values) / sum(values))
            self.median_ms[method].append(statistics.median(values) * 1000)
            self.client_ms[method].append(timings.client_cpu[method] / len(values) * 1000)
            server = timings.server_cpu[method]
            if server is not None:
                self.server_ms[method].append(server / len(values) * 1000)
        self.speedups.append(self.rates["set"][-1] / self.rates["insert"][-1])

    def method(self, method: str) -> dict[str, Any]:
        figures = {
            "finding_rows_per_second": _world.summary(self.rates[method], digits=0),
            "ms_per_report": _world.summary(self.median_ms[method]),
            "client_cpu_ms_per_report": _world.summary(self.client_ms[method]),
        }
        if self.server_ms[method]:
            figures["server_cpu_ms_per_report"] = _world.summary(self.server_ms[method])
        return figures


def run(
    *,
    rounds: int = ROUNDS,
    repeats: int = REPEATS,
    writers: int = 2,
    farm: tuple[int, int] = (FARM_ADVISORIES, FARM_SCANS),
    farm_repeats: int = FARM_REPEATS,
) -> dict[str, Any]:
    """``farm``: (advisories, scans) already stored in the database of ``farm_repeats`` more
    runs (``_fill_like_a_farm``), reported apart under ``farm_database``."""
    report = reports.parse_file(REPORT)
    findings = len(report.findings)
    fresh = _Figures(findings)
    farm_sized = _Figures(findings)
    parallel: list[float] = []
    stored_before = 0
    with _world.running_services() as svc:
        for _ in range(repeats):
            fresh.add(_one_run(svc.database(), report, rounds))
            parallel.append(_parallel(svc.database(), report, rounds, writers))
        for _ in range(farm_repeats):
            url = svc.database()
            stored_before = _fill_like_a_farm(url, *farm)
            farm_sized.add(_one_run(url, report, rounds))
    result: dict[str, Any] = {
        "report": REPORT.name,
        "findings_per_report": findings,
        "reports_per_method_per_run": rounds,
        "set": fresh.method("set"),
        "insert": fresh.method("insert"),
        "set_speedup": _world.summary(fresh.speedups, digits=1),
        f"set_{writers}_writers_rows_per_second": _world.summary(parallel, digits=0),
    }
    if farm_repeats:
        result["farm_database"] = {
            "advisories": farm[0],
            "findings": stored_before,
            "set": farm_sized.method("set"),
            "insert": farm_sized.method("insert"),
            "set_speedup": _world.summary(farm_sized.speedups, digits=1),
        }
    rate = result["set"]["finding_rows_per_second"]["median"]
    result["target"] = f">= {TARGET_ROWS} finding rows/s and >= {TARGET_SPEEDUP:g}x INSERT"
    result["met"] = rate >= TARGET_ROWS and result["set_speedup"]["median"] >= TARGET_SPEEDUP
    print(
        f"  one statement: {rate:.0f} rows/s ({result['set']['ms_per_report']['median']} "
        f"ms/report), insert: {result['insert']['finding_rows_per_second']['median']:.0f} "
        f"rows/s, speedup {result['set_speedup']['median']}x, {writers} writers: "
        f"{result[f'set_{writers}_writers_rows_per_second']['median']:.0f} rows/s",
        flush=True,
    )
    return result
