"""deploy/ NetworkPolicies, evaluated: where a scan pod may connect, who may reach the farm.

The policies are read from deploy/ and evaluated the way the NetworkPolicy API
defines them (a pod selected by any policy of a direction is isolated in that
direction; a connection is allowed when some rule of a selecting policy
matches the peer and the port; ``ipBlock`` with ``except``; named ports)
against the destinations an attacker in a scan pod would try: cloud metadata,
the API server, kubelets, the farm's Redis/Postgres/Flower, other namespaces,
DNS resolvers outside the cluster. The evaluator is guarded by tests of its own.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
FARM_NS = "scanqueue"
SCANS_NS = "scanqueue-scans"


def _docs(*, optional: bool) -> list[dict[str, Any]]:
    out = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        relative = str(path.relative_to(DEPLOY))
        if relative.startswith("templates/") or (relative.startswith("optional/") and not optional):
            continue
        out += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return out


APPLIED = _docs(optional=False)
WITH_OPTIONAL = _docs(optional=True)
# the scan namespace's policies alone: its egress rules must refuse, whatever other
# namespaces' ingress policies do
SCANS_ONLY = [d for d in WITH_OPTIONAL if d.get("metadata", {}).get("namespace") == SCANS_NS]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One side of a connection: an address, and a pod's namespace and labels if it is one."""

    ip: str
    namespace: str | None = None  # None: outside the cluster
    labels: tuple[tuple[str, str], ...] = ()
    port: int = 0
    protocol: str = "TCP"
    port_names: tuple[tuple[str, int], ...] = ()

    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def _namespace_labels(namespace: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": namespace}


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(peer: dict[str, Any], other: Endpoint, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        network = ipaddress.ip_network(block["cidr"])
        if address.version != network.version or address not in network:
            return False
        return not any(
            address in ipaddress.ip_network(e)
            for e in block.get("except") or []
            if ipaddress.ip_network(e).version == address.version
        )
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], _namespace_labels(other.namespace)):
            return False
    elif other.namespace != policy_ns:
        return False
    return "podSelector" not in peer or _selects(peer["podSelector"], other.label_map())


def _port_matches(ports: list[dict[str, Any]] | None, target: Endpoint) -> bool:
    if not ports:
        return True
    for port in ports:
        if port.get("protocol", "TCP") != target.protocol:
            continue
        wanted = port.get("port")
        if wanted is None:
            return True
        number = dict(target.port_names).get(wanted) if isinstance(wanted, str) else wanted
        if number == target.port:
            return True
    return False


def allowed(docs: list[dict[str, Any]], source: Endpoint, target: Endpoint) -> bool:
    """Whether ``source`` may open a connection to ``target`` under the policies of ``docs``."""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for direction, pod, peer, key, peers_key in (
        ("Egress", source, target, "egress", "to"),
        ("Ingress", target, source, "ingress", "from"),
    ):
        if pod.namespace is None:
            continue
        selecting = [
            p
            for p in policies
            if p["metadata"]["namespace"] == pod.namespace
            and direction in p["spec"].get("policyTypes", ["Ingress"])
            and _selects(p["spec"]["podSelector"], pod.label_map())
        ]
        if not selecting:
            continue
        if not any(
            (
                not rule.get(peers_key)
                or any(_peer_matches(x, peer, p["metadata"]["namespace"]) for x in rule[peers_key])
            )
            and _port_matches(rule.get("ports"), target)
            for p in selecting
            for rule in p["spec"].get(key) or []
        ):
            return False
    return True


def _farm_pod(component: str, port: int, ip: str = "10.244.1.10") -> Endpoint:
    """A farm pod as deploy/ defines it: its template labels and its named ports."""
    for doc in WITH_OPTIONAL:
        if doc["kind"] != "Deployment" or doc["metadata"]["namespace"] != FARM_NS:
            continue
        labels = doc["spec"]["template"]["metadata"]["labels"]
        if component in (
            labels.get("app.kubernetes.io/component"),
            labels.get("app.kubernetes.io/name"),
        ):
            names = tuple(
                (p["name"], p["containerPort"])
                for c in doc["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports") or []
                if "name" in p
            )
            return Endpoint(ip, FARM_NS, tuple(sorted(labels.items())), port, "TCP", names)
    raise AssertionError(f"no Deployment {component} in deploy/")


SCAN_POD = Endpoint(
    "10.244.2.20",
    SCANS_NS,
    (("app.kubernetes.io/managed-by", "scanqueue"), ("scanqueue.io/mode", "node")),
)
OUTSIDE = {
    "cloud metadata": Endpoint("169.254.169.254", port=80),
    "cloud metadata (IPv6)": Endpoint("fd00:ec2::254", port=80),
    "API server service": Endpoint("10.96.0.1", port=443),
    "API server endpoint": Endpoint("172.20.0.10", port=6443),
    "API server on 443 in a node range": Endpoint("192.168.10.2", port=443),
    "kubelet": Endpoint("10.0.0.21", port=10250),
    "kubelet (CGNAT node range)": Endpoint("100.64.3.4", port=10250),
    "public DNS resolver": Endpoint("8.8.8.8", port=53, protocol="UDP"),
    "a public host on another port": Endpoint("203.0.113.7", port=22),
    "loopback of the node": Endpoint("127.0.0.1", port=10248),
    # why compose runs no Trivy server (docs/operations.md): the farm's Docker host, even
    # with a TLS proxy in front of a server there, is no place scan pods may connect to
    "a Trivy server on the compose host": Endpoint("192.168.10.50", port=4954),
    "a TLS proxy on the compose host": Endpoint("10.20.0.5", port=443),
}
IN_CLUSTER = {
    "farm Redis": Endpoint("10.244.1.30", FARM_NS, (("app", "redis"),), 6379),
    "farm Postgres": Endpoint("10.244.1.31", FARM_NS, (("app", "postgres"),), 5432),
    "another team's pod": Endpoint("10.244.3.3", "team-a", (("app", "web"),), 8080),
    "DNS on a non-DNS pod of kube-system": Endpoint(
        "10.244.0.9", "kube-system", (("k8s-app", "metrics-server"),), 443
    ),
}


@pytest.mark.parametrize("name", [*OUTSIDE, *IN_CLUSTER])
def test_a_scan_pod_cannot_reach(name: str) -> None:
    target = OUTSIDE.get(name) or IN_CLUSTER[name]
    assert not allowed(SCANS_ONLY, SCAN_POD, target)


@pytest.mark.parametrize(
    ("component", "port"), [("flower", 5555), ("worker", 9101), ("watcher", 9100)]
)
def test_a_scan_pod_cannot_reach_the_farm(component: str, port: int) -> None:
    assert not allowed(SCANS_ONLY, SCAN_POD, _farm_pod(component, port))


@pytest.mark.parametrize(
    "target",
    [
        Endpoint("10.244.0.5", "kube-system", (("k8s-app", "kube-dns"),), 53, "UDP"),
        Endpoint("10.244.0.5", "kube-system", (("k8s-app", "kube-dns"),), 53, "TCP"),
        Endpoint("140.82.112.33", port=443),  # ghcr.io: the Trivy DB, images
        Endpoint("104.16.1.2", port=443),  # a registry behind a CDN
        Endpoint("2606:50c0:8000::154", port=443),
        Endpoint("192.0.2.10", port=5000),  # the example private registry
    ],
    ids=["dns-udp", "dns-tcp", "ghcr", "registry", "registry-v6", "private-registry"],
)
def test_a_scan_pod_reaches_dns_and_registries(target: Endpoint) -> None:
    assert allowed(APPLIED, SCAN_POD, target)


def test_a_scan_pod_reaches_the_trivy_server_when_it_is_installed() -> None:
    server = _farm_pod("trivy-server", 4954)
    assert allowed(WITH_OPTIONAL, SCAN_POD, server)
    assert not allowed(WITH_OPTIONAL, SCAN_POD, dataclasses.replace(server, port=4955))


def test_only_scan_pods_and_the_workers_reach_the_trivy_server() -> None:
    server = _farm_pod("trivy-server", 4954)
    worker = _farm_pod("worker", 0, ip="10.244.1.11")  # rescans from stored SBOMs
    assert allowed(WITH_OPTIONAL, worker, server)
    for component in ("watcher", "beat", "flower", "exporter"):
        assert not allowed(WITH_OPTIONAL, _farm_pod(component, 0, ip="10.244.1.12"), server)
    other = Endpoint("10.244.3.3", "team-a", (("app", "web"),))
    assert not allowed(WITH_OPTIONAL, other, server)
    impostor = Endpoint("10.244.3.4", "team-a", worker.labels)  # a worker's labels elsewhere
    assert not allowed(WITH_OPTIONAL, impostor, server)


MONITORING = Endpoint("10.244.5.5", "monitoring", (("app", "prometheus"),))


@pytest.mark.parametrize(
    ("component", "port"), [("watcher", 9100), ("worker", 9101), ("exporter", 9464)]
)
def test_prometheus_in_the_monitoring_namespace_reaches_the_metrics(
    component: str, port: int
) -> None:
    target = _farm_pod(component, port)
    assert allowed(APPLIED, MONITORING, target)
    assert not allowed(APPLIED, dataclasses.replace(MONITORING, namespace="team-a"), target)
    assert not allowed(APPLIED, SCAN_POD, target)


@pytest.mark.parametrize(
    "source",
    [MONITORING, SCAN_POD, Endpoint("10.244.3.3", "team-a")],
    ids=["monitoring", "scan", "team-a"],
)
def test_no_pod_connects_to_flower(source: Endpoint) -> None:
    assert not allowed(WITH_OPTIONAL, source, _farm_pod("flower", 5555))


def test_every_farm_pod_is_isolated_for_ingress() -> None:
    for component in ("watcher", "worker", "beat", "flower", "exporter", "trivy-server"):
        target = _farm_pod(component, 1)  # no port of ours: only a default deny explains a refusal
        assert not allowed(WITH_OPTIONAL, MONITORING, target), component


# --- the evaluator refuses and allows what the API says --------------------------------------


def test_evaluator_allows_everything_without_policies() -> None:
    assert allowed([], SCAN_POD, OUTSIDE["cloud metadata"])


def test_evaluator_sees_that_an_allow_all_egress_rule_opens_metadata() -> None:
    widened = [
        *APPLIED,
        {
            "kind": "NetworkPolicy",
            "metadata": {"name": "oops", "namespace": SCANS_NS},  # e.g. a CNI default
            "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
        },
    ]
    assert allowed(widened, SCAN_POD, OUTSIDE["cloud metadata"])
    assert allowed(widened, SCAN_POD, IN_CLUSTER["another team's pod"])
