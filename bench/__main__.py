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
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
