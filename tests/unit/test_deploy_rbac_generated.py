"""``scanqueue rbac`` generates what deploy/ ships, per watched namespace and nothing wider."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from scanqueue import config, rbac
from tests.unit import test_deploy

ROOT = Path(__file__).resolve().parents[2]


def _cluster(**changes: object) -> config.ClusterSettings:
    return config.ClusterSettings(name="c", in_cluster=True, **changes)  # type: ignore[arg-type]


def test_the_shipped_team_a_file_is_what_the_generator_makes_for_team_a() -> None:
    shipped = [
        d for d in yaml.safe_load_all((ROOT / "deploy" / "22-rbac-team-a.yaml").read_text()) if d
    ]
    assert shipped == rbac.documents(_cluster(namespaces=("team-a",)))


def test_the_optional_cluster_wide_binding_is_what_namespaces_all_makes() -> None:
    path = ROOT / "deploy" / "optional" / "watcher-cluster-wide.yaml"
    shipped = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert shipped == rbac.documents(_cluster())


def test_each_watched_namespace_gets_its_bindings_and_an_excluded_one_none() -> None:
    docs = rbac.documents(_cluster(namespaces=("a", "b", "c"), exclude_namespaces=("b",)))
    assert {d["metadata"]["namespace"] for d in docs} == {"a", "c"}
    assert all(d["kind"] in ("Role", "RoleBinding") for d in docs)
    for doc in docs:
        kubernetes_validate.validate(doc, test_deploy.K8S_VERSION, strict=True)


def test_the_generated_grants_are_the_watched_namespace_grants_of_deploy() -> None:
    """With the ClusterRole of deploy/, the generated bindings grant the watcher and the
    worker exactly what test_deploy_rbac found needed, in those namespaces only."""
    cluster_role = test_deploy._one("ClusterRole", "scanqueue-watcher", None)
    docs = [cluster_role, *rbac.documents(_cluster(namespaces=("x", "y")))]
    watcher = {
        (g.namespace, g.resource, g.verb) for g in test_deploy.grants(test_deploy.WATCHER, docs)
    }
    worker = {
        (g.namespace, g.resource, g.verb) for g in test_deploy.grants(test_deploy.WORKER, docs)
    }
    for ns in ("x", "y"):
        assert {(ns, "pods", "list"), (ns, "pods", "watch")} <= watcher
        assert worker >= {(ns, "secrets", "get"), (ns, "serviceaccounts", "get")}
    assert {g[0] for g in watcher | worker} == {"x", "y"}, "nothing cluster-wide"


def test_the_command_prints_the_documents_for_kubectl(tmp_path: Path) -> None:
    settings = tmp_path / "scanqueue.toml"
    settings.write_text(
        '[[clusters]]\nname = "prod"\nin_cluster = true\nnamespaces = ["t1", "t2"]\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "scanqueue.cli", "rbac"],
        env={"SCANQUEUE_CONFIG": str(settings), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert printed == rbac.documents(_cluster(namespaces=("t1", "t2")))


@pytest.mark.parametrize("clusters", [0, 2])
def test_the_command_asks_which_cluster_when_it_cannot_tell(tmp_path: Path, clusters: int) -> None:
    settings = tmp_path / "scanqueue.toml"
    settings.write_text(
        "".join(f'[[clusters]]\nname = "c{i}"\nin_cluster = true\n' for i in range(clusters))
    )
    done = subprocess.run(
        [sys.executable, "-m", "scanqueue.cli", "rbac"],
        env={"SCANQUEUE_CONFIG": str(settings), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "--cluster" in done.stderr
