"""A stall is visible: the cluster's API fails for collects while scan Jobs are in flight.

The workers stay healthy and idle-looking; what shows the stall is time. While
the API does not answer the collect's requests, ``scanqueue status`` marks
the cluster STALLED and exits 1, and the worker's metrics show the oldest
scan in flight getting older and the last collect falling behind. Once the
API answers again the farm finishes every scan and ``status`` exits 0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from scanqueue import cli
from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import reliability_fixtures as rel

REPORT = Path(__file__).parents[1] / "data" / "trivy" / "node-alpine-3.19.json"
COLLECT_INTERVAL = 1.0  # a stall: 5 intervals without a completed collect, Jobs in flight


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _status(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object], str]:
    code = cli.main(["status", "--format", "json"])
    out, err = capsys.readouterr()
    (row,) = json.loads(out)
    return code, row, err


def _deploy(farm: rel.ReliableFarm, name: str) -> str:
    sim, host = farm.sim, farm.registry.host
    digest = farm.registry.push(f"team/{name}", "1", content=f"stall {name}")
    image = f"{host}/team/{name}:1"
    sim.set_digest(image, digest)
    sim.set_report(digest, REPORT)
    sim.create(rel.pod(name, image, secrets=["regcred"]))
    return digest


def test_status_and_metrics_show_a_cluster_whose_api_fails_with_jobs_in_flight(
    reliable_farm: rel.ReliableFarm,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    farm, sim = reliable_farm, reliable_farm.sim
    farm.scan["collect_interval_seconds"] = COLLECT_INTERVAL
    host = farm.registry.host
    sim.create(rel.pull_secret("regcred", rel.dockerconfig(host, REGISTRY_USER, REGISTRY_PASSWORD)))
    _deploy(farm, "before")
    farm.start(workers=0)
    worker = farm.worker(metrics=True)
    monkeypatch.setenv("SCANQUEUE_CONFIG", str(farm.config_path))
    rel.wait_finished(farm, 1)
    # healthy: collects keep completing, nothing in flight
    farm.wait_for(
        lambda: (s := _status(capsys))[0] == 0 and s[1]["last_collect_s_ago"] is not None,
        timeout=30,
        what="status ok, a collect pass completed",
    )

    # The API now fails every request a collect or a sweep makes (the Job watch's collect
    # tasks included); what a submit needs still works, so new scan Jobs go in flight.
    for verb, resource in (("list", "jobs"), ("get", "jobs"), ("list", "pods"),
                           ("get", "pods/log"), ("list", "secrets")):  # fmt: skip
        sim.faults.fail(503, verb=verb, resource=resource, count=-1, retry_after=0.2)
    stalled_at = time.time()
    creates = sim.request_counts().get(("create", "jobs"), 0)
    for name in ("during-a", "during-b"):
        _deploy(farm, name)
    farm.wait_for(
        lambda: sim.request_counts().get(("create", "jobs"), 0) >= creates + 2,
        timeout=60,
        what="two more scan Jobs created",
    )

    _, row, err = farm.wait_for(
        lambda: (s := _status(capsys))[0] == 1 and s, timeout=60, what="status exits 1"
    )
    assert row["state"] == "STALLED" and row["cluster"] == "alpha", row
    assert row["in_flight"] == 2, row
    assert float(str(row["last_collect_s_ago"])) >= 5 * COLLECT_INTERVAL - 0.1, row  # rounded
    assert "is beat running" in err
    running = farm.query("SELECT count(*) FROM scans WHERE status = 'running'")
    assert running == [(row["in_flight"],)], running

    text = worker.metrics()  # type: ignore[attr-defined]
    read_at = time.time()
    last_collect = _metric(text, "scanqueue_last_collect_timestamp_seconds", cluster="alpha")
    oldest = _metric(text, "scanqueue_oldest_in_flight_seconds", cluster="alpha")
    assert last_collect is not None and last_collect <= stalled_at + COLLECT_INTERVAL, text
    # the oldest scan in flight went in after the faults, and keeps getting older
    assert oldest is not None and 0 < oldest <= read_at - stalled_at, text
    time.sleep(1.0)
    again = _metric(worker.metrics(), "scanqueue_oldest_in_flight_seconds", cluster="alpha")  # type: ignore[attr-defined]
    assert again is not None and again >= oldest + 0.9, (oldest, again)
    assert _metric(text, "scanqueue_scans_waiting", cluster="alpha") == 0

    sim.faults.clear()
    rows = rel.wait_finished(farm, 3, timeout=120)
    assert {r[1] for r in rows} == {"succeeded"}
    farm.wait_for(lambda: _status(capsys)[0] == 0, timeout=30, what="status ok again")
    farm.wait_for(lambda: not rel.leftovers(sim), timeout=30, what="no Job or Secret left")
