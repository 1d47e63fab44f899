"""Every verb deploy/ grants has a line of code that needs it, and every call is granted.

``CALLS`` maps each function of the ``scanqueue/kube`` package to the request it sends
(its HTTP method and resource, or the helper that sends it, found in the function's
source, so a changed request fails here) and the grants that request needs. The
identities' code is read with ``ast``: the watcher's process is the
``scanqueue/watcher`` package and ``jobwatch.py`` (not ``explain``, which people run
with their own kubeconfig), the worker's is the ``scanqueue/scans`` package and
``keyrings.py`` (the pull secrets it reads). Then, in both directions:

- every ``kube.<fn>(...)`` an identity's code makes is granted in deploy/, in the
  namespaces where it is made (watched namespaces, or the scan namespace);
- every grant deploy/ gives the watcher and the worker is needed by some call.

``PENDING`` lists calls known to be coming whose grant is deliberately absent;
the test fails as soon as one is made, naming the grant to add.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from tests.unit import test_deploy

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "scanqueue" / "kube"
SCANS_NS = test_deploy.SCANS_NS


@dataclasses.dataclass(frozen=True)
class Call:
    request: tuple[str, ...]  # what the function's source names: HTTP method and resource
    needs: tuple[tuple[str, str, str], ...]  # (API group, resource, verb)
    where: str  # "watched": the namespaces of the pods; "scans": the scan namespace


CALLS = {
    # the watcher
    "list_pod_pages": Call(("_pages(", "_pods("), (("", "pods", "list"),), "watched"),
    "watch_pods": Call(("_events(", '"pods"'), (("", "pods", "watch"),), "watched"),
    # discovery reads only the intermediate owners (discovery._INTERMEDIATE_OWNERS)
    "read_owner": Call(
        ('"GET"', '"replicasets"'),
        (("apps", "replicasets", "get"), ("batch", "jobs", "get")),
        "watched",
    ),
    # the watcher's Job watch (jobwatch.py), in the scan namespace
    "list_job_pages": Call(("_pages(", "_jobs("), (("batch", "jobs", "list"),), "scans"),
    "watch_jobs": Call(("_events(", '"jobs"'), (("batch", "jobs", "watch"),), "scans"),
    # the worker, in the watched namespaces: a pod's pull Secrets and service account
    "read_secret": Call(('"GET"', '"secrets"'), (("", "secrets", "get"),), "watched"),
    "read_service_account": Call(
        ('"GET"', '"serviceaccounts"'), (("", "serviceaccounts", "get"),), "watched"
    ),
    # the worker, in the scan namespace
    "create_job": Call(
        ('"POST"', '"jobs"', "read_job("),
        # an existing Job is read (read_job) and adopted
        (("batch", "jobs", "create"), ("batch", "jobs", "get")),
        "scans",
    ),
    "read_job": Call(('"GET"', "_job("), (("batch", "jobs", "get"),), "scans"),
    "resume_job": Call(('"PATCH"', "_job("), (("batch", "jobs", "patch"),), "scans"),
    "list_jobs": Call(("_pages(", "_jobs("), (("batch", "jobs", "list"),), "scans"),
    "delete_job": Call(('"DELETE"', "_job("), (("batch", "jobs", "delete"),), "scans"),
    "create_secret": Call(
        ('"POST"', '"secrets"', "read_secret("),
        (
            ("", "secrets", "create"),
            ("", "secrets", "get"),  # an existing Secret is read to compare its owner
            # its ownerReference sets blockOwnerDeletion (manifests.scan_secret), which
            # OwnerReferencesPermissionEnforcement allows only with update on the finalizers
            ("batch", "jobs/finalizers", "update"),
        ),
        "scans",
    ),
    "list_secrets": Call(("_pages(", '"secrets"'), (("", "secrets", "list"),), "scans"),
    "delete_secret": Call(('"DELETE"', '"secrets"'), (("", "secrets", "delete"),), "scans"),
    "list_pods": Call(("list_pod_pages(",), (("", "pods", "list"),), "scans"),
    "pods_of_job": Call(("_pages(", "_pods("), (("", "pods", "list"),), "scans"),
    "read_pod_log": Call(("read_pod_log_bytes(",), (("", "pods/log", "get"),), "scans"),
    "read_pod_log_bytes": Call(('"GET"', '"log"'), (("", "pods/log", "get"),), "scans"),
}

# Known to be coming, grant deliberately absent until the call exists.
PENDING: dict[str, str] = {}

IDENTITIES = {
    "watcher": (
        test_deploy.WATCHER,
        [
            *sorted((ROOT / "scanqueue" / "watcher").glob("*.py")),
            ROOT / "scanqueue" / "jobwatch.py",
        ],
        {"explain"},
    ),
    "worker": (
        test_deploy.WORKER,
        [*sorted((ROOT / "scanqueue" / "scans").glob("*.py")), ROOT / "scanqueue" / "keyrings.py"],
        set(),
    ),
}


def _kube_calls(paths: list[Path], skip_functions: set[str]) -> set[str]:
    """Names ``fn`` of every ``kube.fn(...)`` call in ``paths``, outside ``skip_functions``."""
    found: set[str] = set()
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef) and f.name in skip_functions
            for n in ast.walk(f)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "kube"
                and id(node) not in skipped
            ):
                found.add(node.func.attr)
    return found


def _namespaces(where: str) -> set[str]:
    return test_deploy._watched_namespaces() if where == "watched" else {SCANS_NS}


def _granted(identity: str) -> set[tuple[str | None, str, str, str]]:
    who = IDENTITIES[identity][0]
    applied = test_deploy.grants(who, test_deploy.APPLIED)
    return {(g.namespace, g.group, g.resource, g.verb) for g in applied}


def _called(identity: str) -> set[str]:
    _, paths, skip = IDENTITIES[identity]
    return {c for c in _kube_calls(paths, skip) if c not in ("api_client",) and c[0].islower()}


def test_the_call_table_names_real_kube_functions_and_api_methods() -> None:
    sources = {path: path.read_text(encoding="utf-8") for path in sorted(KUBE.glob("*.py"))}
    functions = {
        n.name: ast.get_source_segment(source, n) or ""
        for source in sources.values()
        for n in ast.parse(source).body
        if isinstance(n, ast.FunctionDef)
    }
    objects = sources[KUBE / "objects.py"]
    for name, call in CALLS.items():
        assert name in functions, f"kube.{name} does not exist: update CALLS"
        # read_owner's resources sit in its table of owner kinds (kube.objects._OWNERS)
        body = functions[name] + (objects if name == "read_owner" else "")
        for part in call.request:
            assert part in body, f"kube.{name} no longer sends {part}: update CALLS"
    # the helpers named there send what their callers are granted for
    assert '"GET"' in functions["_pages"] and '"GET"' in functions["_events"]
    assert '"watch", "true"' in functions["_events"]


@pytest.mark.parametrize("identity", IDENTITIES)
def test_every_call_an_identity_makes_is_in_the_table(identity: str) -> None:
    called = _called(identity)
    assert called, "the call finder finds nothing: the code moved"
    for name in called:
        assert name not in PENDING, f"kube.{name} is now called by the {identity}: {PENDING[name]}"
        assert name in CALLS, (
            f"kube.{name} called by the {identity}: add it to CALLS with its grants"
        )


@pytest.mark.parametrize("identity", IDENTITIES)
def test_every_call_an_identity_makes_is_granted_where_it_is_made(identity: str) -> None:
    granted = _granted(identity)
    for name in _called(identity) & set(CALLS):
        call = CALLS[name]
        for namespace in _namespaces(call.where):
            for group, resource, verb in call.needs:
                assert (namespace, group, resource, verb) in granted, (
                    f"kube.{name} by the {identity} needs {verb} {resource} in {namespace}"
                )


@pytest.mark.parametrize("identity", IDENTITIES)
def test_every_grant_of_an_identity_is_needed_by_a_call(identity: str) -> None:
    needed = {
        (namespace, group, resource, verb)
        for name in _called(identity) & set(CALLS)
        for namespace in _namespaces(CALLS[name].where)
        for group, resource, verb in CALLS[name].needs
    }
    unused = sorted(_granted(identity) - needed, key=str)
    assert unused == [], f"the {identity} is granted what no code calls: {unused}"


def test_the_watcher_is_bound_per_watched_namespace_not_cluster_wide() -> None:
    bindings = [
        d for d in test_deploy.APPLIED if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
    ]
    watcher = [
        b for b in bindings if any(s["name"] == "scanqueue-watcher" for s in b.get("subjects", []))
    ]
    assert {b["kind"] for b in watcher} == {"RoleBinding"}
    # per watched namespace, plus the scan namespace for its Job watch (jobwatch.py)
    assert {b["metadata"]["namespace"] for b in watcher} == test_deploy._watched_namespaces() | {
        SCANS_NS
    }
    assert all(g[0] is not None for g in _granted("watcher"))


def test_the_cluster_wide_watcher_binding_is_optional_for_namespaces_all() -> None:
    optional = [
        d for p, d in test_deploy.DOCS if "/optional/" in p and d["kind"] == "ClusterRoleBinding"
    ]
    assert [d["roleRef"]["name"] for d in optional] == ["scanqueue-watcher"]
    everywhere = test_deploy.grants(test_deploy.WATCHER, test_deploy.ALL)
    assert {(g.resource, g.verb) for g in everywhere if g.namespace is None} == {
        ("pods", "list"),
        ("pods", "watch"),
        ("replicasets", "get"),
        ("jobs", "get"),
    }


def test_the_call_finder_sees_a_call_that_is_not_granted(tmp_path: Path) -> None:
    """Guards the tests above: a new kube call in the worker's code is found."""
    module = tmp_path / "m.py"
    module.write_text("from scanqueue import kube\n\ndef f(api):\n    kube.watch_jobs(api=api)\n")
    assert _kube_calls([module], set()) == {"watch_jobs"}
    assert _kube_calls([module], {"f"}) == set()
