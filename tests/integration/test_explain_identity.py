"""``scanqueue explain`` with the caller's own kubeconfig, a role that lacks permissions,
and no farm services: it says what it skipped and names each missing permission."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from scanqueue import cli, kube
from tests.support import sim_fixtures
from tests.support.watcher_fixtures import Workloads, wait_for

CANARY = "explain-id-canary-pw-5c1e"


@pytest.fixture
def running_pod(sim: sim_fixtures.SimCluster) -> sim_fixtures.SimCluster:
    w = Workloads(sim)
    auth = base64.b64encode(f"ci:{CANARY}".encode()).decode()
    w.pull_secret("shop", "regcred", {"registry.example.com": {"auth": auth}})
    w.bare_pod(
        "shop", "web", "registry.example.com/team/app:1", imagePullSecrets=[{"name": "regcred"}]
    )
    wait_for(
        lambda: (sim.get("Pod", "shop", "web") or {}).get("status", {}).get("phase") == "Running",
        what="the pod running",
    )
    return sim


@pytest.fixture
def no_farm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configuration whose Redis and Postgres are not there (ports nobody listens on)."""
    path = tmp_path / "scanqueue.toml"
    path.write_text(
        '[database]\nurl = "postgresql://postgres@127.0.0.1:9/none"\n'
        '[broker]\nurl = "redis://127.0.0.1:9/0"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("SCANQUEUE_CONFIG", str(path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return path


def explain(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["explain", "web", "--namespace", "shop", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_reads_with_my_kubeconfig_and_skips_what_it_cannot_reach(
    running_pod: sim_fixtures.SimCluster, no_farm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = running_pod
    code, out, err = explain(
        capsys, "--cluster", "mine", "--kubeconfig", str(sim.kubeconfig), "--no-database"
    )
    assert code == 0, err
    assert f"read as {sim.kubeconfig}" in out
    assert "1. secret shop/regcred, registry key registry.example.com" in out
    assert "skipped: last scan (--no-database)" in out
    assert "skipped: farm state (Redis): Redis: cannot read" in out
    assert CANARY not in out + err


def test_explain_uses_kubeconfig_from_the_environment(
    running_pod: sim_fixtures.SimCluster,
    no_farm: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(running_pod.kubeconfig))
    code, out, err = explain(capsys, "--cluster", "mine", "--no-redis")
    assert code == 0, err
    assert "skipped: farm state (no Redis)" in out
    assert "skipped: last scan: cannot connect to Postgres" in out
    assert "digest     sha256:" in out


def test_a_secret_the_role_may_not_read_is_a_note_naming_the_permission(
    running_pod: sim_fixtures.SimCluster, no_farm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = running_pod
    sim.faults.fail(403, verb="get", resource="secrets", count=-1)
    code, out, err = explain(
        capsys, "--cluster", "mine", "--kubeconfig", str(sim.kubeconfig),
        "--no-database", "--no-redis",
    )  # fmt: skip
    assert code == 0, err
    assert "pull secret shop/regcred not read" in out
    assert "may not get secrets in namespace shop" in out
    assert "credentials: none match" in out
    assert "Traceback" not in out + err


def test_a_pod_the_role_may_not_list_fails_with_one_line_naming_the_permission(
    running_pod: sim_fixtures.SimCluster, no_farm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = running_pod
    sim.faults.fail(403, verb="list", resource="pods", count=-1)
    code, _, err = explain(
        capsys, "--cluster", "mine", "--kubeconfig", str(sim.kubeconfig),
        "--no-database", "--no-redis",
    )  # fmt: skip
    assert code == 2
    assert "may not list pods in namespace shop" in err
    assert "verbs: [list], resources: [pods]" in err
    assert len(err.strip().splitlines()) == 1


def test_forbidden_names_verb_resource_and_namespace(
    running_pod: sim_fixtures.SimCluster,
) -> None:
    sim = running_pod
    sim.faults.fail(403, verb="get", resource="serviceaccounts", count=1)
    from scanqueue import config

    api = kube.api_client(config.ClusterSettings(name="x", kubeconfig=str(sim.kubeconfig)))
    try:
        with pytest.raises(kube.Forbidden) as caught:
            kube.read_service_account(api=api, namespace="shop", name="default")
    finally:
        api.close()
    assert (caught.value.verb, caught.value.resource, caught.value.namespace) == (
        "get",
        "serviceaccounts",
        "shop",
    )


def _explain_role_grants() -> tuple[set[tuple[str, str]], set[tuple[str, str, str]]]:
    """(verb, resource) granted cluster-wide, and (namespace, verb, resource) per namespace,
    to the group deploy/23-rbac-explain.yaml binds."""
    import yaml

    docs = [
        d
        for d in yaml.safe_load_all(
            (Path(__file__).parents[2] / "deploy" / "23-rbac-explain.yaml").read_text()
        )
        if d
    ]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    everywhere: set[tuple[str, str]] = set()
    per_namespace: set[tuple[str, str, str]] = set()
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        assert [s["name"] for s in binding["subjects"]] == ["scanqueue-explain"]
        rules = roles[binding["roleRef"]["name"]]["rules"]
        pairs = {(v, r) for rule in rules for r in rule["resources"] for v in rule["verbs"]}
        if binding["kind"] == "ClusterRoleBinding":
            everywhere |= pairs
        else:
            per_namespace |= {(binding["metadata"]["namespace"], v, r) for v, r in pairs}
    return everywhere, per_namespace


def test_explain_needs_nothing_but_the_documented_read_only_role(
    running_pod: sim_fixtures.SimCluster, no_farm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = running_pod
    everywhere, per_namespace = _explain_role_grants()
    assert not {v for v, _ in everywhere} & {"create", "update", "patch", "delete", "watch"}
    assert not any(r == "secrets" for _, r in everywhere), "secrets only per namespace"
    assert {(v, r) for _, v, r in per_namespace} == {("get", "secrets")}
    sim.reset_counts()
    code, out, err = explain(
        capsys, "--cluster", "mine", "--kubeconfig", str(sim.kubeconfig),
        "--no-database", "--no-redis",
    )  # fmt: skip
    assert code == 0, err
    assert "1. secret shop/regcred, registry key registry.example.com" in out
    used = set(sim.request_counts())
    assert ("list", "pods") in used and ("get", "secrets") in used
    # every request explain made is one the role allows (secrets: where a RoleBinding grants)
    assert used <= everywhere | {("get", "secrets")}, used - everywhere
