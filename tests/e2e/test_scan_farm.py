"""The farm end to end: emulator + real registry + watcher and worker processes + Redis + Postgres.

Each private image is scanned with exactly one credential from the secret
the kubelet would use, the result lands in Postgres with where the
credential came from, nothing is left in the cluster, and a canary password
planted in a pull secret appears nowhere else.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.support import reliability_fixtures as reliability
from tests.support import services
from tests.support.farm_fixtures import SCAN_NAMESPACE, Farm

REPORTS = Path(__file__).parents[1] / "data" / "trivy"
CANARY_USER = "canary-user"
CANARY = "Canary-Pw-7f3e9b21-do-not-leak"
NS = "team-a"


def _dockerconfig(host: str, user: str, password: str) -> dict[str, Any]:
    return json.loads(services.dockerconfigjson(host, user, password))


def _secret(name: str, config: dict[str, Any]) -> dict[str, Any]:
    data = base64.b64encode(json.dumps(config).encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": data},
    }


def _pod(name: str, image: str, *, secrets: list[str] = (), account: str = "default") -> dict:
    spec: dict[str, Any] = {
        "serviceAccountName": account,
        "containers": [{"name": "app", "image": image}],
    }
    if secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def _run_pod(farm: Farm, name: str, image: str, digest: str, report: str, **kw: Any) -> None:
    sim = farm.clusters["alpha"]
    sim.set_digest(image, digest)
    sim.set_report(digest, REPORTS / report)
    sim.create(_pod(name, image, **kw))


def _leftovers(farm: Farm) -> list[str]:
    sim = farm.clusters["alpha"]
    return [
        f"{kind} {o['metadata']['name']}"
        for kind in ("Job", "Secret")
        for o in sim.list(kind, SCAN_NAMESPACE)
    ]


def test_each_image_is_scanned_with_the_credential_the_kubelet_would_use(
    farm: Farm, registry_factory: Any
) -> None:
    registry = farm.registry
    public = registry_factory(anonymous=True)
    farm.insecure.append(public.host)
    registry.set_password(CANARY_USER, CANARY)
    sim = farm.clusters["alpha"]
    host = registry.host
    digests = {
        "pod-secret": registry.push("team/pod-secret", "1", content="e2e pod secret"),
        "sa-secret": registry.push("team/sa-secret", "1", content="e2e sa secret"),
        "two-secrets": registry.push("team/two-secrets", "1", content="e2e two secrets"),
        "node-only": registry.push("team/node-only", "1", content="e2e node only"),
    }
    public_digest = public.push("library/public", "1", content="e2e public")

    sim.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    sim.create(_secret("canary-cred", _dockerconfig(host, CANARY_USER, CANARY)))
    sim.create(_secret("sa-cred", _dockerconfig(host, REGISTRY_USER, REGISTRY_PASSWORD)))
    sim.create(_secret("wrong-cred", _dockerconfig(host, REGISTRY_USER, "not-the-password")))
    sim.create(_secret("right-cred", _dockerconfig(host, REGISTRY_USER, REGISTRY_PASSWORD)))
    sim.create(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "builder", "namespace": NS},
            "imagePullSecrets": [{"name": "sa-cred"}],
        }
    )
    _run_pod(farm, "pod-secret", f"{host}/team/pod-secret:1", digests["pod-secret"],
             "node-alpine-3.19.json", secrets=["canary-cred"])  # fmt: skip
    _run_pod(farm, "sa-secret", f"{host}/team/sa-secret:1", digests["sa-secret"],
             "ecr-private-alpine-3.19.json", account="builder")  # fmt: skip
    _run_pod(farm, "two-secrets", f"{host}/team/two-secrets:1", digests["two-secrets"],
             "python-slim-debian-13.json", secrets=["wrong-cred", "right-cred"])  # fmt: skip
    _run_pod(farm, "public", f"{public.host}/library/public:1", public_digest,
             "python-debian-12-bom-crlf.json")  # fmt: skip
    _run_pod(farm, "node-only", f"{host}/team/node-only:1", digests["node-only"],
             "node-alpine-3.19.json")  # fmt: skip

    seen = reliability.ObjectRecorder(sim, "Secret")
    farm.start(flower=True)
    scans = farm.wait_for(
        lambda: (
            (s := farm.scans()) and len(s) == 5 and all(v[0] != "running" for v in s.values()) and s
        ),
        timeout=120,
        what="five finished scans",
    )
    assert scans["team/pod-secret"][:3] == ("succeeded", "registry", f"{NS}/canary-cred ({host})")
    assert scans["team/pod-secret"][4] == 7
    assert scans["team/sa-secret"][:3] == ("succeeded", "registry", f"{NS}/sa-cred ({host})")
    assert scans["team/sa-secret"][4] == 29
    assert scans["team/two-secrets"][:3] == ("succeeded", "registry", f"{NS}/right-cred ({host})")
    assert scans["team/two-secrets"][4] == 128
    assert scans["library/public"][:3] == ("succeeded", "anonymous", "anonymous")
    assert scans["library/public"][4] == 212
    assert scans["team/node-only"][:3] == ("succeeded", "node", "node")
    assert scans["team/node-only"][4] == 7

    farm.wait_for(lambda: not _leftovers(farm), timeout=30, what="no scan Job or Secret left")
    seen.stop()
    # one Secret per credentialed scan (3 of the 5), each holding exactly one credential and
    # owned by its Job from its first moment
    assert len(seen.added) == 3, seen.added
    for secret in seen.added:
        assert sorted(secret["data"]) == ["password", "username"]
        assert secret["immutable"] is True
        owners = secret["metadata"]["ownerReferences"]
        assert [(o["kind"], o["controller"]) for o in owners] == [("Job", True)]
    users = sorted(base64.b64decode(s["data"]["username"]).decode() for s in seen.added)
    assert users == sorted([CANARY_USER, REGISTRY_USER, REGISTRY_USER])
    _assert_canary_nowhere(farm)


def _flower_views(farm: Farm) -> str:
    """Flower's task list and every task's detail view, as an operator would see them."""
    flower = farm.flower
    assert flower is not None
    assert flower.get("/api/tasks", auth=None) == 401  # no auth, no view
    status, listing = flower.fetch("/api/tasks")
    assert status == 200
    tasks = json.loads(listing)
    scan_tasks = [t for t in tasks.values() if t.get("name") == "scanqueue.scan"]
    assert len(scan_tasks) == 5, "Flower saw every scan task"
    views = [listing]
    for task_id in tasks:
        status, body = flower.fetch(f"/api/task/info/{task_id}")
        assert status == 200
        views.append(body)
    return "\n".join(views)


def _assert_canary_nowhere(farm: Farm) -> None:
    needles = [CANARY, base64.b64encode(f"{CANARY_USER}:{CANARY}".encode()).decode()]
    places = reliability.leak_places(farm, extra={"flower task views": _flower_views(farm)})
    reliability.assert_nowhere(needles, places)
