"""``explain.pod``: per container, its digest, the credentials to try in order, its scan."""

from __future__ import annotations

import base64
from typing import Any

from scanqueue import config, dedupe, explain, kube, store
from tests.support import sim_fixtures
from tests.support.watcher_fixtures import Workloads, wait_for

CANARY = "explain-canary-pw-93ab"


def auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_explain_lists_candidates_in_kubelet_order_without_values(
    sim: sim_fixtures.SimCluster, redis_url: str, database_url: str
) -> None:
    w = Workloads(sim)
    w.pull_secret(
        "shop",
        "regcred",
        {
            "registry.example.com": auth("ci", CANARY),
            "registry.example.com/team": auth("team", CANARY),
            "other.example.com": auth("x", CANARY),
        },
    )
    w.bare_pod(
        "shop",
        "web",
        "registry.example.com/team/app:1",
        imagePullSecrets=[{"name": "missing"}, {"name": "regcred"}],
        initContainers=[{"name": "setup", "image": "busybox:1.36"}],
    )
    wait_for(
        lambda: (sim.get("Pod", "shop", "web") or {}).get("status", {}).get("phase") == "Running",
        what="the pod running",
    )
    digest = sim.digest_of("registry.example.com/team/app:1")
    cluster = config.ClusterSettings(name="eu", kubeconfig=str(sim.kubeconfig))
    settings = config.Settings(clusters=(cluster,))
    api = kube.api_client(cluster)
    r = dedupe.client(redis_url)
    try:
        dedupe.claim(r, cluster="eu", digests=[digest], ttl_seconds=60)
        with store.connect(database_url) as conn:
            views = explain.pod(
                settings=settings,
                cluster="eu",
                namespace="shop",
                pod="web",
                api=api,
                redis_client=r,
                conn=conn,
            )
    finally:
        api.close()
        r.close()
    by_name = {v.request.container: v for v in views}
    app, setup = by_name["app"], by_name["setup"]
    assert app.request.digest == digest
    assert [(c.source, c.key) for c in app.candidates] == [
        ("shop/regcred", "registry.example.com/team"),
        ("shop/regcred", "registry.example.com"),
    ]
    assert setup.candidates == ()  # nothing matches docker.io/library/busybox
    assert "pull secret shop/missing not found" in app.notes
    assert app.last_scan is None and not app.fresh
    assert app.in_flight is not None and app.in_flight.cluster == "eu"
    assert setup.request.container_type == "init"
    text: Any = repr(views)
    assert CANARY not in text
    assert base64.b64encode(f"ci:{CANARY}".encode()).decode() not in text
