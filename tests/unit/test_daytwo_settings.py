"""Day-two settings: failure backoff per reason, scan pod sizing, CA bundle and Java DB mirror."""

from __future__ import annotations

import dataclasses
from typing import Any

import kubernetes_validate
import pytest

from scanqueue import config, errors, failures, manifests

DIGEST = "sha256:" + "cd" * 32
SCAN = config.ScanSettings()


def cluster(**changes: Any) -> config.ClusterSettings:
    return config.ClusterSettings(name="prod-eu", kubeconfig="/k", **changes)


def job(mode: str = "registry", **changes: Any) -> dict[str, Any]:
    spec = manifests.ScanSpec(
        cluster=cluster(**changes),
        scan=SCAN,
        image="registry.internal.example/team/app",
        digest=DIGEST,
        mode=mode,  # type: ignore[arg-type]
        scan_id="scan-1",
        attempt=1,
        credential=None,
        node_name="node-1" if mode == "node" else None,
    )
    return manifests.scan_job(spec)


def trivy(job: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == "trivy")


@pytest.mark.parametrize(
    ("status", "reason", "kind"),
    [
        ("refused", "no way to pull x: the registry refused all 2 candidate(s)", "credential"),
        ("failed", "scan Job s/j failed (BackoffLimitExceeded): 403 Forbidden", "credential"),
        ("failed", "UNAUTHORIZED: authentication required", "credential"),
        ("timeout", "scan Job s/j exceeded its deadline of 600s", "transient"),
        ("failed", "scan Job s/j: the cluster could not pull the scan container's image "
                   "(ImagePullBackOff)", "transient"),
        ("failed", "its credential Secret was missing when the pod started "
                   "(CreateContainerConfigError)", "transient"),
        ("failed", "gave up after 8 retries: create Job s/j: HTTP 503; retry later", "transient"),
        ("failed", "log of scan Job s/j is not a Trivy JSON report: starts with 'oops'", "failed"),
        ("failed", "scan Job s/j failed (BackoffLimitExceeded): FATAL db error", "failed"),
    ],
)  # fmt: skip
def test_each_failure_reason_has_its_kind(status: str, reason: str, kind: str) -> None:
    assert failures.kind(status, reason) == kind


def test_a_refused_credential_is_retried_sooner_than_a_bad_report() -> None:
    credential = failures.delay("credential", 1, scan=SCAN)
    report = failures.delay("failed", 1, scan=SCAN)
    assert (credential, report) == (300, 21600)
    assert credential < report < SCAN.rescan_interval_seconds


def test_transient_failures_wait_longer_each_time_up_to_the_failed_wait() -> None:
    waits = [failures.delay("transient", n, scan=SCAN) for n in range(1, 12)]
    assert waits[:5] == [120, 240, 480, 960, 1920]
    assert waits == sorted(waits)
    assert waits[-1] == SCAN.backoff_failed_seconds
    assert failures.delay("transient", 10_000, scan=SCAN) == SCAN.backoff_failed_seconds


def test_no_wait_exceeds_the_rescan_interval() -> None:
    short = dataclasses.replace(SCAN, rescan_interval_seconds=600)
    assert failures.delay("failed", 1, scan=short) == 600
    assert failures.delay("transient", 9, scan=short) == 600


def test_backoff_settings_load_from_toml_and_environment() -> None:
    settings = config.from_mapping(
        {"scan": {"backoff_credential_seconds": 30}},
        environ={"SCANQUEUE_SCAN_BACKOFF_TRANSIENT_SECONDS": "15"},
    )
    assert (settings.scan.backoff_credential_seconds, settings.scan.backoff_transient_seconds) == (
        30,
        15,
    )
    with pytest.raises(errors.ConfigError, match="backoff_failed_seconds must be positive"):
        config.from_mapping({"scan": {"backoff_failed_seconds": 0}})
    with pytest.raises(errors.ConfigError, match="retain_gone_days"):
        config.from_mapping({"database": {"retain_gone_days": -1}})


def test_scan_pod_defaults_are_the_documented_sizes() -> None:
    resources = trivy(job())["resources"]
    assert resources == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "4Gi"},
    }


@pytest.mark.parametrize("mode", ["registry", "node"])
def test_scan_pod_requests_and_limits_come_from_the_cluster(mode: str) -> None:
    built = job(
        mode,
        scan_cpu_request="250m",
        scan_memory_request="512Mi",
        scan_cpu_limit="2",
        scan_memory_limit="3Gi",
        scan_ephemeral_storage_limit="8Gi",
    )
    kubernetes_validate.validate(built, "1.30", strict=True)
    assert trivy(built)["resources"] == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "3Gi", "ephemeral-storage": "8Gi"},
    }


def test_a_bad_quantity_is_refused_at_load_naming_the_key() -> None:
    with pytest.raises(errors.ConfigError, match=r"clusters\[0\]\.scan_memory_limit '2 GB'"):
        config.from_mapping(
            {"clusters": [{"name": "a", "kubeconfig": "/k", "scan_memory_limit": "2 GB"}]}
        )


@pytest.mark.parametrize("mode", ["registry", "node"])
def test_ca_bundle_configmap_is_mounted_and_given_to_trivy(mode: str) -> None:
    built = job(mode, ca_bundle_configmap="internal-ca", trivy_image="aquasec/trivy:0.76.0")
    kubernetes_validate.validate(built, "1.30", strict=True)
    pod = built["spec"]["template"]["spec"]
    assert {"name": "ca", "configMap": {"name": "internal-ca", "optional": False,
            "items": [{"key": "ca.crt", "path": "ca.crt"}]}} in pod["volumes"]  # fmt: skip
    container = trivy(built)
    assert {"name": "ca", "mountPath": "/etc/scanqueue/ca", "readOnly": True} in container[
        "volumeMounts"
    ]
    args = container["args"]
    assert args[args.index("--cacert") + 1] == "/etc/scanqueue/ca/ca.crt"


def test_without_a_ca_bundle_there_is_no_ca_volume_or_flag() -> None:
    built = job()
    assert all(v["name"] != "ca" for v in built["spec"]["template"]["spec"]["volumes"])
    assert "--cacert" not in trivy(built)["args"]
    assert "--java-db-repository" not in trivy(built)["args"]
    assert "--db-repository" not in trivy(built)["args"]


@pytest.mark.parametrize("mode", ["registry", "node"])
def test_db_mirrors_are_passed_to_trivy(mode: str) -> None:
    built = job(
        mode,
        trivy_db_repository="mirror.internal/aquasec/trivy-db:2",
        java_db_repository="mirror.internal/aquasec/trivy-java-db:1",
    )
    kubernetes_validate.validate(built, "1.30", strict=True)
    args = trivy(built)["args"]
    assert args[args.index("--db-repository") + 1] == "mirror.internal/aquasec/trivy-db:2"
    assert args[args.index("--java-db-repository") + 1] == "mirror.internal/aquasec/trivy-java-db:1"


def test_a_ca_bundle_with_a_trivy_image_older_than_cacert_is_refused_at_load() -> None:
    base = {"name": "a", "kubeconfig": "/k", "ca_bundle_configmap": "internal-ca"}
    with pytest.raises(errors.ConfigError, match=r"Trivy 0.70 or later.*aquasec/trivy:0.57.1"):
        config.from_mapping({"clusters": [{**base, "trivy_image": "aquasec/trivy:0.57.1"}]})
    for image in ("aquasec/trivy:0.76.0", "mirror.internal:5000/trivy:v0.70.1", "trivy@sha256:00"):
        settings = config.from_mapping({"clusters": [{**base, "trivy_image": image}]})
        assert settings.clusters[0].ca_bundle_configmap == "internal-ca"
