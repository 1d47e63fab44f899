"""Rescans from stored SBOMs next to full scans, on the same digests.

One generated cluster (``digests`` Deployments, one image digest each, every
scan Job printing the recorded 212-finding report, which lists its 107
packages): a ``ClusterWatcher`` publishes one task per digest and this
process runs every submit and collect (``_world.watch_and_scan``: the full
scans, each a Job with its own credential Secret). Then each digest's SBOM is
kept as a worker keeps it (``trivy convert``, gzip), and rescans run the way
the ``scanqueue.rescan`` queue runs them: one plan pass, then ``trivy sbom``
per digest against a real ``trivy server`` (the test DB), stored through the
same ingest. Each repeat first gives the Trivy server a newer DB (a new
``UpdatedAt``), which is what makes every digest due.

Reported: full scans per second (instant Jobs: no Trivy runs; the pipeline's
own cost), rescans per second with 1 and 2 rescans at once (the real Trivy
each time), API requests and Secrets per full scan and per rescan (the
target: 0 and 0 for a rescan), and the stored bytes per digest.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path
from typing import Any

from bench import _world
from scanqueue import config, dedupe, store
from scanqueue.scans import rescan
from scanqueue.sim import scanner, trivydb
from scanqueue.store import sboms as stored_sboms
from tests.support import services, trivy_fixtures

DIGESTS = _world.env_int("RESCAN_DIGESTS", 40)
REPEATS = _world.env_int("RESCAN_REPEATS", 3)
TARGET = "0 API requests and 0 Secrets per rescan"


def _secrets(counts: dict[str, int]) -> int:
    return sum(n for key, n in counts.items() if key == "create secrets")


def _requests(counts: dict[str, int]) -> int:
    return sum(counts.values())


def _rescan_all(r: rescan.Rescanner, published: list[dict[str, Any]], parallel: int) -> float:
    """One plan pass and every rescan it publishes; returns the seconds it took."""
    published.clear()
    started = time.perf_counter()
    planned = rescan.plan(r)
    if planned.rescans != len(published) or not published:
        raise RuntimeError(f"plan published {len(published)} rescans ({planned})")

    def one(kwargs: dict[str, Any]) -> str:
        return rescan.run(r, **kwargs)

    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        outcomes = list(pool.map(one, list(published)))
    seconds = time.perf_counter() - started
    if set(outcomes) != {"succeeded"}:
        raise RuntimeError(f"rescan outcomes: {sorted(set(outcomes))}")
    return seconds


def run(digests: int = DIGESTS, repeats: int = REPEATS) -> dict[str, Any]:
    """Full scans, then ``repeats`` plan-and-rescan rounds per parallelism, on ``digests``."""
    shape = _world.Shape(pods=digests * 2, workloads=digests, digests=digests)
    text = _world.REPORT.read_text(encoding="utf-8-sig")
    with (
        _world.running_services() as svc,
        services.tempdir("sq-bench-rescan-") as tmp,
        _world.emulator(tmp) as sim,
    ):
        database_url = svc.database()
        full = _world.watch_and_scan(svc, shape, database_url=database_url, sim=sim)
        if full.scans_stored != digests:
            raise RuntimeError(f"{full.scans_stored} full scans stored of {digests}")
        full_counts = {**full.submit_requests}
        for key, n in full.collect_requests.items():
            full_counts[key] = full_counts.get(key, 0) + n
        generation = [0]

        def new_db() -> Path:
            generation[0] += 1
            advisories = trivydb.load(trivy_fixtures.ADVISORIES)
            when = f"2026-{generation[0]:02d}-01T00:00:00Z"
            cache = tmp / f"cache-{generation[0]}"
            trivydb.write_db(trivydb.AdvisoryFile(advisories.advisories, when), cache)
            return cache

        server = scanner.Server(new_db(), log=tmp / "trivy-server.log").start()
        try:
            settings = config.from_mapping(
                {"database": {"url": database_url}, "broker": {"url": svc.redis_url},
                 "rescan": {"enabled": True, "trivy_server": server.url,
                            "max_per_plan": digests * 2}},
                environ={},
            )  # fmt: skip
            published: list[dict[str, Any]] = []
            r = rescan.Rescanner(
                settings=settings,
                db=store.pool(database_url, min_size=1, max_size=4),
                redis=dedupe.client(svc.redis_url),
                publish=published.append,
            )
            try:
                keep = _keep_all(r, settings, text)
                sim.reset_counts()  # the cluster the full scans ran in: rescans must not touch it
                timings: dict[int, list[float]] = {1: [], 2: []}
                for parallel in (1, 2):
                    for _ in range(repeats):
                        port = server.port
                        server.stop()
                        server = scanner.Server(new_db(), log=server.log_path).start(port=port)
                        timings[parallel].append(_rescan_all(r, published, parallel))
                rescan_counts = {f"{v} {res}": n for (v, res), n in sim.request_counts().items()}
                with r.db.connection() as conn:
                    count, size, stored = stored_sboms.stored_sizes(conn)
            finally:
                r.db.close()
                r.redis.close()
        finally:
            server.stop()
    rescans = digests * repeats * 2
    full_rate = full.scans_stored / full.scan_seconds
    one = _world.summary([digests / s for s in timings[1]])
    two = _world.summary([digests / s for s in timings[2]])
    api_per_rescan = round(_requests(rescan_counts) / rescans, 3)
    return {
        "digests": digests,
        "full_scans_per_second": round(full_rate, 2),
        "full_api_requests_per_scan": round(_requests(full_counts) / full.scans_stored, 2),
        "full_secrets_per_scan": round(_secrets(full_counts) / full.scans_stored, 2),
        "rescans_per_second_1": one,
        "rescans_per_second_2": two,
        "rescan_api_requests_per_rescan": api_per_rescan,
        "rescan_secrets_per_rescan": round(_secrets(rescan_counts) / rescans, 3),
        "sbom_keep_ms_per_digest": round(keep * 1000 / digests, 1),
        "sboms_stored": count,
        "sbom_bytes_per_digest": {
            "cyclonedx": size // max(count, 1),
            "stored_gzip": stored // max(count, 1),
        },
        "target": TARGET,
        "met": not rescan_counts,
    }


def _keep_all(r: rescan.Rescanner, settings: config.Settings, text: str) -> float:
    """Keep every full scan's SBOM as the collect step does; returns the seconds it took."""
    with r.db.connection() as conn:
        rows = conn.execute(
            "SELECT id, digest FROM scans WHERE status = 'succeeded' AND mode = 'registry'"
        ).fetchall()
    reports = [_distinct(text, i) for i in range(len(rows))]
    started = time.perf_counter()
    for (scan_id, digest), report in zip(rows, reports, strict=True):
        if not rescan.keep_sbom(settings=settings, db=r.db, scan_id=scan_id, digest=digest,
                                text=report):  # fmt: skip
            raise RuntimeError(f"no SBOM kept for {digest}")
    return time.perf_counter() - started


def _distinct(text: str, i: int) -> str:
    """The recorded report with one more Python package, ``bench-<i>``: distinct images have
    distinct package lists (identical ones are rescanned one at a time, farm-wide)."""
    report = json.loads(text)
    for result in report["Results"]:
        if result.get("Class") == "lang-pkgs" and result.get("Packages"):
            extra = json.loads(json.dumps(result["Packages"][0]))
            extra.update(Name=f"bench-{i}", Version="1.0.0")
            extra["Identifier"] = {"PURL": f"pkg:pypi/bench-{i}@1.0.0"}
            extra["FilePath"] = extra["FilePath"].replace("pip-", f"bench_{i}-")
            result["Packages"].append(extra)
            return json.dumps(report)
    raise RuntimeError("the recorded report has no Python packages to vary")
