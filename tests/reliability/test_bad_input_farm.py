"""Bad input in a running farm ends as scan rows with a reason; the watcher and workers live on.

Pull secrets that are malformed or of the wrong type, a missing secret, a
missing service account, a task naming an image that is not a reference, and Trivy
output that is empty, truncated, legacy, a stack trace or HTML: each ends as
one scan row saying what is wrong, and a good image deployed afterwards is
still scanned by the same processes.
"""

from __future__ import annotations

import json
from pathlib import Path

from scanqueue import dedupe, discovery, publish
from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import reliability_fixtures as rel

BAD = Path(__file__).parents[1] / "data" / "bad"
GOOD = Path(__file__).parents[1] / "data" / "trivy" / "node-alpine-3.19.json"


def test_each_bad_input_ends_as_a_scan_row_with_its_reason_and_processes_stay_up(
    reliable_farm: rel.ReliableFarm,
) -> None:
    farm, sim = reliable_farm, reliable_farm.sim
    farm.scan["allow_anonymous"] = False
    farm.cluster_options["scan_mode"] = "registry"  # no node-mode fallback: refusals show
    host = farm.registry.host
    good_cred = rel.dockerconfig(host, REGISTRY_USER, REGISTRY_PASSWORD)
    sim.create(rel.pull_secret("good", good_cred))
    malformed = (BAD / "dockerconfig" / "auth-not-base64.json").read_bytes()
    sim.create(
        rel.pull_secret("bad-base64", malformed.replace(b"registry.example.com", host.encode()))
    )
    # (a .dockerconfigjson that is not JSON at all is refused by the API server itself, as
    # by the emulator: only the parser tests in test_bad_input.py can show it)
    sim.create(rel.pull_secret("opaque", json.dumps(good_cred).encode(), type_="Opaque",
                               key="config.json"))  # fmt: skip

    expected: dict[str, tuple[str, str]] = {}  # pod -> (status, text in the reason)

    def deploy(name: str, *, secrets: list[str], account: str = "default",
               report: Path | None = None, reason: str, status: str) -> None:  # fmt: skip
        digest = farm.registry.push(f"team/{name}", "1", content=f"bad input {name}")
        image = f"{host}/team/{name}:1"
        sim.set_digest(image, digest)
        sim.set_report(digest, report or GOOD)
        sim.create(rel.pod(name, image, secrets=secrets, account=account))
        expected[digest] = (status, reason)

    deploy("malformed-secret", secrets=["bad-base64"], status="refused",
           reason="not base64 of username:password")  # fmt: skip
    deploy("wrong-type-secret", secrets=["opaque"], status="refused", reason="team-a/opaque")
    deploy("missing-secret", secrets=["nowhere"], status="refused",
           reason="pull secret team-a/nowhere not found")  # fmt: skip
    # admission refuses a pod whose service account does not exist: delete it afterwards
    ghost = {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": "ghost", "namespace": rel.NS}}  # fmt: skip
    sim.create(ghost)
    deploy("missing-account", secrets=[], account="ghost", status="refused",
           reason="service account team-a/ghost not found")  # fmt: skip
    sim.delete("ServiceAccount", rel.NS, "ghost")
    outputs = [("empty.txt", "empty output"), ("truncated.json", "truncated JSON"),
               ("legacy-list.json", "legacy Trivy JSON"),
               ("stack-trace.txt", "panic: runtime error"), ("html.html", "not JSON")]  # fmt: skip
    for name, text in outputs:
        deploy(f"report-{name.split('.')[0]}", secrets=["good"], report=BAD / "trivy" / name,
               status="failed", reason=text)  # fmt: skip

    farm.start()
    # A kubelet never runs an image that is not a reference (the pod waits in
    # InvalidImageName, with no digest to scan), so such a reference reaches a worker
    # only in a task: one published by hand, as an older watcher could have.
    bad = discovery.ScanRequest(
        cluster="alpha", namespace=rel.NS, pod="not-a-reference", workload_kind="Pod",
        workload_name="not-a-reference", container="app", container_type="app",
        image="registry.example.com/Team/App:1", digest="sha256:" + "e" * 64, node="node-1",
        pull_secrets=("good",), service_account="default", scan_id=dedupe.new_scan_id(),
    )  # fmt: skip
    publisher = publish.Publisher(farm.redis_url)
    publisher.publish(bad)
    publisher.close()
    expected[bad.digest or ""] = ("failed", "must be lowercase")
    rows = rel.wait_finished(farm, len(expected), timeout=120)
    got = {r[0]: (r[1], r[3] or "") for r in rows}
    assert set(got) == set(expected)
    for digest, (status, reason) in expected.items():
        assert got[digest][0] == status, (digest, got[digest])
        assert reason in got[digest][1], (reason, got[digest][1])
    farm.wait_for(lambda: not rel.leftovers(sim), timeout=30, what="no Job or Secret left")

    # the same processes go on scanning good input
    deploy("good-after", secrets=["good"], status="succeeded", reason="")
    rows = rel.wait_finished(farm, len(expected), timeout=60)
    assert {r[0]: r[1] for r in rows}[list(expected)[-1]] == "succeeded"
    for process in [*farm.watchers, *farm.workers]:
        assert process.proc is not None and process.proc.poll() is None
    assert "Traceback" not in farm.logs()  # bad input is an answer, not a crash
