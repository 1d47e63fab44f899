"""deploy/24-quota-scans.yaml backs max_inflight, and a full quota is a temporary error.

The quota must admit twice max_inflight scan pods as ``scanqueue/manifests.py``
builds them (finished Jobs wait for collection and still count), and no
more than a small multiple of that. A create refused with "exceeded quota"
(403) must be retried by the worker, not end the scan as a missing permission.
"""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

from scanqueue import config, errors, kube, manifests
from tests.unit import test_deploy

QUOTA = test_deploy._one("ResourceQuota", "scanqueue-scans", test_deploy.SCANS_NS)
HARD = QUOTA["spec"]["hard"]


def _max_inflight() -> int:
    (cluster,) = test_deploy._settings().clusters
    return cluster.max_inflight


def _scan_pod() -> dict:
    cluster = config.ClusterSettings(name="c", in_cluster=True, scan_namespace=test_deploy.SCANS_NS)
    spec = manifests.ScanSpec(
        cluster=cluster,
        scan=config.ScanSettings(),
        image="registry.example.com/a",
        digest="sha256:" + "1" * 64,
        mode="node",
        scan_id="s",
        attempt=0,
        node_name="n",
    )
    return manifests.scan_job(spec)["spec"]["template"]["spec"]


def _pod_total(pod: dict, kind: str, resource: str) -> float:
    """What the quota charges a pod: the larger of its biggest init container and its
    containers' sum (init containers run one at a time, before the others)."""

    def amount(c: dict) -> float:
        return float(parse_quantity(c["resources"].get(kind, {}).get(resource, "0")))

    init = max((amount(c) for c in pod.get("initContainers", [])), default=0.0)
    return max(init, sum(amount(c) for c in pod["containers"]))


def test_the_quota_lives_in_the_scan_namespace_and_counts_jobs_pods_and_secrets() -> None:
    assert QUOTA["metadata"]["namespace"] == test_deploy.SCANS_NS
    n = _max_inflight()
    for key in ("count/jobs.batch", "pods"):
        assert 2 * n <= int(HARD[key]) <= 4 * n, key
    assert int(HARD["secrets"]) >= 2 * n + 1, "one per Job and the Trivy server token"


@pytest.mark.parametrize(
    ("quota_key", "kind", "resource"),
    [
        ("requests.cpu", "requests", "cpu"),
        ("requests.memory", "requests", "memory"),
        ("limits.cpu", "limits", "cpu"),
        ("limits.memory", "limits", "memory"),
        ("limits.ephemeral-storage", "limits", "ephemeral-storage"),
    ],
)
def test_the_quota_admits_twice_max_inflight_scan_pods_and_not_much_more(
    quota_key: str, kind: str, resource: str
) -> None:
    per_pod = _pod_total(_scan_pod(), kind, resource)
    assert per_pod > 0, f"every scan container declares {kind}.{resource}: the quota needs it"
    hard = float(parse_quantity(HARD[quota_key]))
    n = _max_inflight()
    assert 2 * n * per_pod <= hard <= 4 * n * per_pod, (quota_key, per_pod, hard)


def test_every_resource_the_quota_limits_is_declared_by_every_scan_container() -> None:
    pod = _scan_pod()
    for key in HARD:
        if key.startswith(("requests.", "limits.")):
            kind, _, resource = key.partition(".")
            for c in [*pod["initContainers"], *pod["containers"]]:
                declared = set(c["resources"].get(kind, {})) | (
                    set(c["resources"].get("limits", {})) if kind == "requests" else set()
                )
                assert resource in declared, (c["name"], key)


def _refusal(message: str) -> ApiException:
    e = ApiException(status=403, reason="Forbidden")
    e.body = json.dumps(
        {"kind": "Status", "code": 403, "reason": "Forbidden", "message": message}
    ).encode()
    return e


def test_a_full_quota_is_a_temporary_error() -> None:
    message = (
        'jobs.batch "sq-1-0" is forbidden: exceeded quota: scanqueue-scans, '
        "requested: count/jobs.batch=1, used: count/jobs.batch=20, limited: count/jobs.batch=20"
    )
    error = kube.apierrors.from_exception(
        "create", "Job", "scanqueue-scans/sq-1-0", _refusal(message)
    )
    assert isinstance(error, errors.TemporaryError)
    assert "ResourceQuota" in str(error)


def test_a_full_quota_on_secrets_is_temporary_and_shows_no_message() -> None:
    message = 'secrets "x" is forbidden: exceeded quota: scanqueue-scans, canary-data-1234'
    error = kube.apierrors.from_exception(
        "create", "Secret", "scanqueue-scans/x", _refusal(message)
    )
    assert isinstance(error, errors.TemporaryError)
    assert "canary-data-1234" not in str(error)


def test_any_other_refusal_stays_a_permanent_error() -> None:
    message = 'jobs.batch is forbidden: User "system:serviceaccount:scanqueue:x" cannot create'
    error = kube.apierrors.from_exception("create", "Job", "scanqueue-scans/sq", _refusal(message))
    assert isinstance(error, errors.PermanentError)
    assert not isinstance(error, errors.TemporaryError)
