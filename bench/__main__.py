"""Run every benchmark module in this package and write bench/results.json.

A module is a benchmark if it defines ``run() -> dict``; modules whose name
starts with ``_`` are skipped. ``python -m bench NAME...`` runs only those.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import bench

RESULTS = Path(__file__).with_name("results.json")


def main(argv: list[str]) -> int:
    names = argv or sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")
    )
    # A partial run (names given) updates those entries and keeps the others.
    results: dict[str, object] = {}
    if argv and RESULTS.exists():
        results = json.loads(RESULTS.read_text())
    failed = False
    before = machine()
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        run = getattr(module, "run", None)
        if not callable(run):
            continue
        print(f"== bench.{name}", flush=True)
        started = time.perf_counter()
        try:
            result = run()
        except Exception:  # a broken benchmark is reported, the others still run
            traceback.print_exc()
            result = {"error": traceback.format_exc(limit=3).strip().splitlines()[-1]}
            failed = True
        result = {**result, "seconds": round(time.perf_counter() - started, 2)}
        results[name] = result
        print(json.dumps(result, indent=2), flush=True)
    after = machine()
    results["machine"] = {"loop_ms_before": before["loop_ms"], "loop_ms_after": after["loop_ms"],
                          "steal_pct_before": before["steal_pct"],
                          "steal_pct_after": after["steal_pct"]}  # fmt: skip
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}\n")
    print(table(results))
    return 1 if failed else 0


def machine() -> dict[str, float]:
    """How fast this machine runs Python right now, so that figures taken on different
    machines, or hours apart on a shared one, can be compared: CPU ms for a fixed
    pure-Python loop (the fastest of 5), and the share of the CPU the hypervisor gave to
    other guests meanwhile (steal, from /proc/stat). The same code measured 0.73 s for this
    loop at one hour and 1.15 s three hours later on the same machine (bench/README)."""

    def cpu_ticks() -> tuple[int, int]:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except (OSError, ValueError):
            return 0, 0
        return sum(fields[:8]), fields[7] if len(fields) > 7 else 0

    total_before, steal_before = cpu_ticks()
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        sum(i * i for i in range(2_000_000))
        best = min(best, time.process_time() - start)
    total_after, steal_after = cpu_ticks()
    total = total_after - total_before
    steal = 100.0 * (steal_after - steal_before) / total if total else 0.0
    return {"loop_ms": round(best * 1000, 1), "steal_pct": round(steal, 1)}


# (module, label, path to a summary {"median", "spread_pct", ...} or a number, target key)
HEADLINES: list[tuple[str, str, tuple[str, ...]]] = [
    ("dedupe", "scan Jobs, 1,000 pods / 200 workloads / 50 digests", ("scan_jobs", "scanqueue")),
    ("dedupe", "  the peers: one Job per workload", ("scan_jobs", "one_per_workload")),
    ("dedupe", "  tasks published", ("tasks_published",)),
    ("api_cost", "API requests per scan", ("requests_per_scan",)),
    ("pipeline", "scans/s, 2 worker processes", ("2_worker", "scans_per_second")),
    ("pipeline", "  scans/s, 1 worker process", ("1_worker", "scans_per_second")),
    ("pipeline", "  2 workers, from watcher start", ("2_worker", "end_to_end_scans_per_second")),
    ("pipeline", "  2 workers, API requests per scan", ("2_worker", "api_requests_per_scan")),
    (
        "pipeline",
        "  2 workers, scan-task messages per scan",
        ("2_worker", "scan_task_messages_per_scan"),
    ),
    ("pipeline", "  2 workers, broker messages per scan", ("2_worker", "broker_messages_per_scan")),
    ("pipeline", "  2 workers, CPU ms/scan, all processes", ("2_worker", "cpu_ms_per_scan_total")),
    ("pipeline", "    workers (pool, beat, Celery main)", ("2_worker", "cpu_ms_per_scan_workers")),
    ("pipeline", "    of which Celery main", ("2_worker", "cpu_ms_per_scan_worker_main")),
    ("pipeline", "    API emulator", ("2_worker", "cpu_ms_per_scan_emulator")),
    ("pipeline", "    Postgres", ("2_worker", "cpu_ms_per_scan_postgres")),
    ("pipeline", "    watcher", ("2_worker", "cpu_ms_per_scan_watcher")),
    ("pipeline", "    Redis", ("2_worker", "cpu_ms_per_scan_redis")),
    ("pipeline", "  scans/s, 2 workers, max_inflight 5", ("2_worker_cap_5", "scans_per_second")),
    (
        "pipeline",
        "  cap 5: scan-task messages per scan",
        ("2_worker_cap_5", "scan_task_messages_per_scan"),
    ),
    ("pipeline", "  cap 5: most scan Jobs at once", ("2_worker_cap_5", "most_jobs_at_once")),
    ("pipeline", "  cap 5: broker messages/scan", ("2_worker_cap_5", "broker_messages_per_scan")),
    ("pipeline", "  cap 5: CPU ms/scan, all", ("2_worker_cap_5", "cpu_ms_per_scan_total")),
    ("ingest", "finding rows/s, one statement per report", ("set", "finding_rows_per_second")),
    ("ingest", "  finding rows/s, row-by-row INSERT", ("insert", "finding_rows_per_second")),
    ("ingest", "  one statement / INSERT", ("set_speedup",)),
    ("ingest", "  one statement, 2 writers at once", ("set_2_writers_rows_per_second",)),
    ("ingest", "  one statement: server CPU ms/report", ("set", "server_cpu_ms_per_report")),
    ("ingest", "  one statement: client CPU ms/report", ("set", "client_cpu_ms_per_report")),
    ("ingest", "  INSERT: server CPU ms/report", ("insert", "server_cpu_ms_per_report")),
    ("ingest", "  INSERT: client CPU ms/report", ("insert", "client_cpu_ms_per_report")),
    (
        "ingest",
        "  farm's database: one statement rows/s",
        ("farm_database", "set", "finding_rows_per_second"),
    ),
    (
        "ingest",
        "  farm's database: INSERT rows/s",
        ("farm_database", "insert", "finding_rows_per_second"),
    ),
    ("ingest", "  farm's database: one statement / INSERT", ("farm_database", "set_speedup")),
    (
        "ingest",
        "  farm's database: statement server CPU ms",
        ("farm_database", "set", "server_cpu_ms_per_report"),
    ),
    ("watcher", "10,000 pods: s to every task published", ("published_seconds",)),
    ("watcher", "  s to the whole inventory written", ("inventory_seconds",)),
    ("watcher", "  peak RSS, MB", ("peak_rss_mb",)),
    ("rescans", "rescans/s from stored SBOMs (real trivy sbom)", ("rescans_per_second_1",)),
    ("rescans", "  rescans/s, 2 at once", ("rescans_per_second_2",)),
    ("rescans", "  full scans/s, same digests (instant Jobs)", ("full_scans_per_second",)),
    ("rescans", "  API requests per rescan", ("rescan_api_requests_per_rescan",)),
    ("rescans", "  Secrets per rescan", ("rescan_secrets_per_rescan",)),
    ("rescans", "  API requests per full scan", ("full_api_requests_per_scan",)),
    ("rescans", "  Secrets per full scan", ("full_secrets_per_scan",)),
    ("exporter", "10,000 containers: ms per metrics scrape", ("scrape_ms_cached",)),
    ("exporter", "  ms per scrape, refreshing all the time", ("scrape_ms_while_refreshing",)),
    ("exporter", "  ms per refresh (queries + text)", ("refresh_ms",)),
]


def table(results: dict[str, Any]) -> str:
    """The headline figures as a text table: median, spread over runs, target met."""
    lines = []
    speed = results.get("machine")
    if isinstance(speed, dict):
        lines.append(
            f"machine: {speed.get('loop_ms_before')} -> {speed.get('loop_ms_after')} CPU ms per "
            f"reference loop (lower is faster), steal {speed.get('steal_pct_before')}% -> "
            f"{speed.get('steal_pct_after')}%"
        )
    lines.append(f"{'figure':<46} {'median':>10} {'spread':>8}  target")
    for module, label, path in HEADLINES:
        node: Any = results.get(module)
        if not isinstance(node, dict):
            continue
        if "error" in node:
            lines.append(f"{label:<46} {'FAILED':>10}")
            continue
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            continue
        median, spread = (node["median"], f"{node['spread_pct']}%") if isinstance(node, dict) \
            else (node, "")  # fmt: skip
        target = ""
        if not label.startswith(" "):
            met = results[module].get("met")
            target = f"{results[module].get('target', '')} ({'met' if met else 'MISSED'})"
        lines.append(f"{label:<46} {median:>10} {spread:>8}  {target}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
