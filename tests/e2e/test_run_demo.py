"""``scanqueue demo`` and ``scanqueue run`` as a newcomer runs them: no configuration, no cluster.

Both take the embedded default (private registry, demo images pushed with
skopeo, the demo scenario on the emulator) with the test's Redis and fresh
Postgres database. ``demo`` must scan every image, print the report and exit
0; ``run`` must serve until SIGTERM and then leave no process behind. Flower
answers its API with basic auth only; the worker serves metrics added up over
its pool processes; worker log records are JSON lines carrying the scan id.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import services, sim_fixtures
from tests.support.farm_fixtures import SCAN_NAMESPACE, write_settings
from tests.support.run_fixtures import FarmCommand, labels, processes_mentioning, scrape

FLOWER_USER = "ops"
FLOWER_CANARY = "Flower-Canary-Pw-5b1e77c0"

# What the real Trivy finds in the demo images (demo_env.DEMO_IMAGES) with the bundled DB
# (scanqueue/sim/data/advisories.yaml):
# team-a/web: libcrypto3 and libssl3 (origin openssl) x CVE-2024-5535 CRITICAL and
#   CVE-2024-4741 HIGH, busybox MEDIUM, musl LOW; zlib 1.3.1 is past its advisory's fix = 6
# payments/api: openssl MEDIUM, glibc HIGH, perl HIGH (no fix), zlib CRITICAL (no fix),
#   libuuid1 and mount (source util-linux) LOW (no fix), requests, urllib3 MEDIUM and
#   jinja2 HIGH = 9, 5 of them fixable
# team-b/reporter: glibc HIGH, util-linux LOW (no fix), zlib CRITICAL (no fix) = 3
# vendor/cache (node mode): busybox MEDIUM, musl LOW = 2; the public busybox image is clean
EXPECTED_TOTALS = {
    ("demo", "payments", "Deployment/api"): 9,
    ("demo", "team-b", "CronJob/nightly"): 3,
    ("demo", "monitoring", "StatefulSet/cache"): 2,
    ("demo", "team-a", "Deployment/web"): 6,
}
README = Path(__file__).parents[2] / "README.md"


def readme_sample() -> list[str]:
    """The rows of the report sample in README.md (the block after `make demo`)."""
    text = README.read_text()
    block = text[text.index("CLUSTER  NAMESPACE") :]
    return block[: block.index("```")].strip().splitlines()


def http_status(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as e:
        return int(e.code), b""


def report_rows(lines: list[str]) -> dict[tuple[str, str, str], int]:
    """The rows of the printed ``scanqueue report`` table: (cluster, ns, workload) -> total."""
    start = next(i for i, line in enumerate(lines) if line.startswith("CLUSTER"))
    rows = {}
    for line in lines[start + 1 :]:
        cells = line.split()
        if len(cells) == 10 and cells[0] == "demo":
            rows[(cells[0], cells[1], cells[2])] = int(cells[-1])
    return rows


def scans(database_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT status, mode FROM scans ORDER BY mode").fetchall()
    return [(str(a), str(b)) for a, b in rows]


def assert_flower_requires_basic_auth(url: str, user: str, password: str) -> None:
    status, body = http_status(f"{url}/api/workers", auth=(user, password))
    assert status == 200
    assert isinstance(json.loads(body), dict)
    assert http_status(f"{url}/api/workers")[0] == 401
    assert http_status(f"{url}/api/workers", auth=(user, password + "x"))[0] == 401
    assert http_status(f"{url}/api/tasks")[0] == 401
    # every queue is declared: Flower shows the demo cluster's queue and the control queue
    status, body = http_status(f"{url}/api/queues/length", auth=(user, password))
    assert status == 200
    names = {q["name"] for q in json.loads(body)["active_queues"]}
    assert {"scan.demo", "scanqueue.control"} <= names


def files_containing(directory: Path, needle: str) -> list[str]:
    return [
        str(p) for p in directory.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()
    ]


def test_demo_scans_every_image_prints_the_report_and_exits_0(
    farm_command: Callable[..., FarmCommand], database_url: str
) -> None:
    command = farm_command("demo", env={"FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_CANARY}"})
    flower = command.wait_line(r"^\s+flower\s+(http://\S+)").group(1)
    assert "embedded default" in command.lines[0]
    assert_flower_requires_basic_auth(flower, FLOWER_USER, FLOWER_CANARY)

    assert command.wait(240) == 0, f"{command.output()}\n{command.errors()}"
    assert report_rows(command.lines) == EXPECTED_TOTALS
    start = next(i for i, line in enumerate(command.lines) if line.startswith("CLUSTER"))
    assert command.lines[start : start + 5] == readme_sample()  # the README shows this run
    assert any("5/5 images scanned" in line for line in command.lines)
    # pod secret, path-scoped secret, service account's legacy .dockercfg; public; node only
    assert scans(database_url) == [
        ("succeeded", "anonymous"),
        ("succeeded", "node"),
        ("succeeded", "registry"),
        ("succeeded", "registry"),
        ("succeeded", "registry"),
    ]
    assert processes_mentioning(str(command.state)) == []
    out = command.output() + command.errors()
    assert FLOWER_CANARY not in out
    assert files_containing(command.state, FLOWER_CANARY) == []


def test_run_serves_until_sigterm_and_leaves_no_process_behind(
    farm_command: Callable[..., FarmCommand],
) -> None:
    command = farm_command("run")  # no FLOWER_BASIC_AUTH: the embedded default makes one
    found = command.wait_line(r"^\s+flower\s+(http://\S+)\s.*user (\S+), password in (\S+)\)")
    flower, user, secret_file = found.group(1), found.group(2), Path(found.group(3))
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    password = secret_file.read_text().strip()
    assert len(password) >= 20
    assert_flower_requires_basic_auth(flower, user, password)
    worker_metrics = command.wait_line(r"metrics\s+worker (http://\S+/metrics)").group(1)
    config_file = command.wait_line(r"report\s+SCANQUEUE_CONFIG=(\S+) scanqueue report").group(1)
    command.wait_line(r"5/5 images scanned", timeout=180)

    # the printed report command works while the farm runs
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANQUEUE_")}
    report = subprocess.run(
        [sys.executable, "-m", "scanqueue.cli", "report", "--format", "json"],
        env={**env, "SCANQUEUE_CONFIG": config_file},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    totals = {(r["cluster"], r["namespace"], r["workload"]): r["total"]
              for r in json.loads(report.stdout)}  # fmt: skip
    assert totals == EXPECTED_TOTALS

    metrics = scrape(worker_metrics)
    demo = labels(cluster="demo")
    assert metrics[("scanqueue_scans_total", labels(cluster="demo", outcome="succeeded"))] == 5
    assert metrics[("scanqueue_scans_total", labels(cluster="demo", outcome="submitted"))] == 5
    assert metrics[("scanqueue_scan_duration_seconds_count", demo)] == 5
    assert metrics[("scanqueue_queue_depth", labels(cluster="demo", queue="scan.demo"))] == 0
    assert ("scanqueue_jobs_in_flight", demo) in metrics
    # vendor/cache: no pull secret covers it and the private registry refuses anonymous
    refusals = {k: v for k, v in metrics.items() if k[0] == "scanqueue_registry_refusals_total"}
    assert sum(refusals.values()) >= 1, refusals
    assert FLOWER_CANARY not in json.dumps(list(metrics))

    command.proc.send_signal(signal.SIGTERM)
    assert command.wait(90) == 0, command.errors()
    assert "scanqueue: stopping" in command.lines
    assert processes_mentioning(str(command.state)) == []
    assert password not in command.output() + command.errors()
    logs = command.state / "logs"
    assert files_containing(logs, password) == []
    records = worker_log_records(logs / "worker.log")
    with_scan = [r for r in records if r.get("scan_id")]
    assert with_scan, "no worker log line carries a scan_id"
    assert all(r.get("cluster") == "demo" for r in with_scan)
    assert any(r.get("digest", "").startswith("sha256:") for r in with_scan)


def worker_log_records(path: Path) -> list[dict[str, object]]:
    """Every log record of a worker log, parsed; fails on a record Celery formatted itself."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
        else:
            # not a log record: Celery's print()s (warm shutdown) and the warnings module's
            # root warning printed before logging is set up. A Celery-formatted record is
            # "[2026-11-23 16:20:01,532: INFO/MainProcess] ...".
            assert not line.startswith("[20"), line
    assert records
    return records


def test_run_sigkilled_takes_its_processes_with_it(
    farm_command: Callable[..., FarmCommand],
) -> None:
    # its own Redis and PostgreSQL too: they must not outlive it either
    command = farm_command("run", "--flower-unauthenticated", "--private-services")
    flower = command.wait_line(r"^\s+flower\s+(http://\S+)\s+\(NO authentication").group(1)
    assert http_status(f"{flower}/api/workers")[0] == 200  # explicitly allowed: open on loopback
    running = "\n".join(processes_mentioning(str(command.state)))
    for role in ("celery", "scanqueue.cli watch", "flower", "redis-server", "postgres -D"):
        assert role in running, f"{role} should be running:\n{running}"
    command.proc.kill()  # no chance to clean up: the roles must notice their parent is gone
    command.wait(30)
    deadline = time.monotonic() + 60
    while (left := processes_mentioning(str(command.state))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == []


def test_run_uses_the_clusters_of_the_configuration(
    farm_command: Callable[..., FarmCommand],
    sim: sim_fixtures.SimCluster,
    registry: services.Registry,
    redis_url: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    digest = registry.push("team/configured", "1", content="run: configured farm")
    image = f"{registry.host}/team/configured:1"
    for name in ("team-a", SCAN_NAMESPACE):
        sim.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    config = json.dumps({"auths": {registry.host: {"auth": base64.b64encode(
        f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()}}})  # fmt: skip
    sim.create({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
                "metadata": {"name": "regcred", "namespace": "team-a"},
                "stringData": {".dockerconfigjson": config}})  # fmt: skip
    sim.set_digest(image, digest)
    sim.create({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "app", "namespace": "team-a"},
                "spec": {"containers": [{"name": "app", "image": image}],
                         "imagePullSecrets": [{"name": "regcred"}]}})  # fmt: skip
    settings = write_settings(
        tmp_path / "scanqueue.toml",
        database_url=database_url,
        redis_url=redis_url,
        clusters=[("alpha", sim.kubeconfig)],
        insecure=[registry.host],
    )
    refused = farm_command("run", env={"SCANQUEUE_CONFIG": str(settings)})
    assert refused.wait(60) == 2
    assert "FLOWER_BASIC_AUTH is not set" in refused.errors()
    assert processes_mentioning(str(refused.state)) == []

    command = farm_command(
        "run",
        env={"SCANQUEUE_CONFIG": str(settings), "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:x-pw-1"},
    )
    assert command.wait_line(r"^scanqueue: ").group(0)
    assert command.lines[0] == f"scanqueue: the clusters of {settings}: alpha"
    command.wait_line(r"^\s+flower\s+http://")
    deadline = time.monotonic() + 120
    while scans(database_url) != [("succeeded", "registry")]:
        assert time.monotonic() < deadline, f"no scan:\n{command.output()}"
        time.sleep(0.5)
    command.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert command.wait(90) == 0
    assert processes_mentioning(str(command.state)) == []
