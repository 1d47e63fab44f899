"""The adopter's day two, end to end: "I fixed the pull secret; how do I rescan now?"

A real watcher process, a real worker, Redis, Postgres, the private registry
and the emulated cluster. A pod's scan is refused for a wrong password; the
failed-here wait is set long (an hour) so that only the product's own command
ends it; `scanqueue explain`, run with the person's own kubeconfig, shows the
refusal, its kind and when the next attempt would be; the secret is fixed;
`scanqueue rescan --namespace` (nobody touches Redis) gets the digest scanned
within a minute; `explain` then shows the successful scan.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from typing import Any

from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support.farm_fixtures import Farm, WatcherProcess
from tests.support.watcher_fixtures import Workloads

NS = "team-a"
WRONG = "a-stale-password-4e1b"


def _cli(farm: Farm, *argv: str) -> subprocess.CompletedProcess[str]:
    assert farm.config_path is not None
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "scanqueue.cli", *argv],
        env={**env, "SCANQUEUE_CONFIG": str(farm.config_path)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _scans(farm: Farm) -> list[tuple[Any, ...]]:
    return farm.query(
        """SELECT s.status, cl.name, s.credential_source FROM scans s
             JOIN clusters cl ON cl.id = s.cluster_id
            WHERE s.status NOT IN ('pending', 'running') ORDER BY s.started_at"""
    )


def _dockerconfig(host: str, password: str) -> str:
    auth = base64.b64encode(f"{REGISTRY_USER}:{password}".encode()).decode()
    return base64.b64encode(json.dumps({"auths": {host: {"auth": auth}}}).encode()).decode()


def test_a_refused_scan_is_explained_and_rescanned_within_a_minute_after_the_fix(
    farm: Farm,
) -> None:
    farm.cluster_options = {"scan_mode": "registry"}  # no node-mode fallback
    farm.scan = {"allow_anonymous": False, "backoff_credential_seconds": 3600}
    host = farm.registry.host
    digest = farm.registry.push("team/story", "1", content="adopter story")
    sim = farm.clusters["alpha"]
    w = Workloads(sim)
    w.namespace(NS)
    sim.create({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
                "metadata": {"name": "regcred", "namespace": NS},
                "data": {".dockerconfigjson": _dockerconfig(host, WRONG)}})  # fmt: skip
    sim.set_digest(f"{host}/team/story:1", digest)
    w.deployment(NS, "web", f"{host}/team/story:1", 1, pull_secrets=["regcred"])

    farm.start(watcher=False)
    assert farm.config_path is not None
    watcher = _Watcher(farm.config_path, farm.directory / "watcher-story.log", ["alpha"])
    farm.watchers.append(watcher.start())
    farm.wait_for(lambda: _scans(farm), timeout=120, what="the refused scan")
    assert [s[0] for s in _scans(farm)] == ["refused"]

    pod = sim.list("Pod", NS, label_selector="app=web")[0]["metadata"]["name"]
    mine = ["--cluster", "alpha", "--namespace", NS, "--kubeconfig", str(sim.kubeconfig)]
    before = _cli(farm, "explain", pod, *mine)
    assert before.returncode == 0, before.stderr
    assert "last scan  refused in alpha" in before.stdout
    assert "failed in  alpha: credential (1 in a row); next attempt there in" in before.stdout
    assert "scanqueue rescan" in before.stdout

    # the fix: the right password in the same Secret
    secret = sim.get("Secret", NS, "regcred")
    assert secret is not None
    secret["data"] = {".dockerconfigjson": _dockerconfig(host, REGISTRY_PASSWORD)}
    sim.replace(secret)
    time.sleep(3)  # the watcher checks every second: the failed-here wait holds it back
    assert [s[0] for s in _scans(farm)] == ["refused"]

    fixed_at = time.monotonic()
    rescan = _cli(farm, "rescan", "--namespace", NS)
    assert rescan.returncode == 0, rescan.stderr
    assert f"cleared {digest} in alpha: credential" in rescan.stdout
    farm.wait_for(
        lambda: [s for s in _scans(farm) if s[0] == "succeeded"], timeout=60, what="the rescan"
    )
    assert time.monotonic() - fixed_at < 60
    assert _scans(farm)[-1] == ("succeeded", "alpha", f"{NS}/regcred ({host})")

    after = _cli(farm, "explain", pod, *mine)
    assert after.returncode == 0, after.stderr
    assert "last scan  succeeded in alpha" in after.stdout
    assert "farm       fresh" in after.stdout
    assert "failed in" not in after.stdout
    for text in (before.stdout, after.stdout, rescan.stdout, farm.logs()):
        assert WRONG not in text and REGISTRY_PASSWORD not in text


class _Watcher(WatcherProcess):
    """The watcher re-checking running digests every second (a rescan is seen at once)."""

    def argv(self) -> list[str]:
        return [*super().argv(), "--reevaluate-seconds", "1"]
