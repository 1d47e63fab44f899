"""A registry that serves TLS with an internal CA, scanned in registry mode.

The test makes the CA and the registry's certificate (openssl), runs
``docker-registry`` with TLS and basic auth on a free loopback port, and
pushes an image with skopeo. The farm checks the credential with
``scan.registry_ca_bundle``; the scan pod gets the CA from the cluster's
``ca_bundle_configmap`` (mounted, ``--cacert``), which the emulated kubelet
reads from the ConfigMap volume to verify the registry's certificate. Without
the ConfigMap setting the same scan fails on the certificate.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scanqueue import processes
from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.e2e.test_redis_tls import _certificates
from tests.e2e.test_scan_farm import NS, _dockerconfig, _pod, _secret
from tests.support import services
from tests.support.farm_fixtures import SCAN_NAMESPACE, Farm


class TlsRegistry:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = services.free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.certs = directory / "certs"  # skopeo's --cert-dir: the CA as ca.crt
        self.process: processes.Process | None = None

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    def start(self) -> TlsRegistry:
        _certificates(self.directory)
        self.certs.mkdir()
        shutil.copy(self.ca_file, self.certs / "ca.crt")
        htpasswd = subprocess.run(
            ["htpasswd", "-Bbn", REGISTRY_USER, REGISTRY_PASSWORD],
            capture_output=True, check=True, text=True,
        ).stdout  # fmt: skip
        (self.directory / "htpasswd").write_text(htpasswd)
        config = self.directory / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.directory / 'data'}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  tls:\n"
            f"    certificate: {self.directory / 'server.crt'}\n"
            f"    key: {self.directory / 'server.key'}\n"
            f"auth:\n  htpasswd:\n    realm: internal-ca\n    path: {self.directory / 'htpasswd'}\n"
        )
        binary = shutil.which("docker-registry")
        assert binary, "docker-registry not installed (make install)"
        process = processes.Process(
            "docker-registry-tls", [binary, "serve", str(config)], self.directory / "registry.log"
        )
        self.process = services._started(process, self.port, "TLS docker-registry")
        return self

    def push(self, repository: str, tag: str) -> str:
        """Push a one-file image; return its digest."""
        root = self.directory / "root"
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc" / "os-release").write_text("ID=alpine\nVERSION_ID=3.19.1\n")
        layer = self.directory / "layer.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(layer), "."], check=True)
        reference = f"docker://{self.host}/{repository}:{tag}"
        creds = f"{REGISTRY_USER}:{REGISTRY_PASSWORD}"
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-cert-dir", str(self.certs),
             "--dest-creds", creds, f"tarball:{layer}", reference],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        inspected = subprocess.run(
            ["skopeo", "inspect", "--cert-dir", str(self.certs), "--creds", creds, reference],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return str(json.loads(inspected.stdout)["Digest"])

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(10)


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[TlsRegistry]:
    directory = tmp_path / "tls-registry"
    directory.mkdir()
    registry = TlsRegistry(directory).start()
    try:
        yield registry
    finally:
        registry.stop()


def _run_scan(
    farm: Farm, registry: TlsRegistry, *, configmap: bool, create: bool = True
) -> tuple[Any, ...]:
    farm.scan = {"registry_ca_bundle": str(registry.ca_file), "allow_anonymous": False}
    farm.cluster_options = {"scan_mode": "registry", "trivy_image": "aquasec/trivy:0.76.0"}
    if configmap:
        farm.cluster_options["ca_bundle_configmap"] = "internal-ca"
    sim = farm.clusters["alpha"]
    for namespace in (NS, SCAN_NAMESPACE):  # farm.start() keeps an existing one
        sim.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    if create:
        sim.create({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "internal-ca", "namespace": SCAN_NAMESPACE},
                    "data": {"ca.crt": registry.ca_file.read_text()}})  # fmt: skip
    digest = registry.push("team/internal", "1")
    image = f"{registry.host}/team/internal:1"
    sim.create(_secret("regcred", _dockerconfig(registry.host, REGISTRY_USER, REGISTRY_PASSWORD)))
    sim.set_digest(image, digest)
    sim.create(_pod("app", image, secrets=["regcred"]))
    farm.start()
    scans = farm.wait_for(
        lambda: (s := farm.scans()) and all(v[0] != "running" for v in s.values()) and s,
        timeout=120,
        what="the scan of the image behind the internal CA",
    )
    return tuple(scans["team/internal"])


def test_an_image_behind_an_internal_ca_is_scanned_with_the_ca_from_the_configmap(
    farm: Farm, tls_registry: TlsRegistry
) -> None:
    status, mode, source, error, _ = _run_scan(farm, tls_registry, configmap=True)
    assert (status, mode, source) == (
        "succeeded",
        "registry",
        f"{NS}/regcred ({tls_registry.host})",
    ), error


def test_without_the_ca_configmap_the_scan_pod_refuses_the_certificate(
    farm: Farm, tls_registry: TlsRegistry
) -> None:
    status, _, _, error, _ = _run_scan(farm, tls_registry, configmap=False)
    assert status == "failed"
    assert "certificate" in (error or ""), error
    assert REGISTRY_PASSWORD not in (error or "")


def test_a_missing_ca_configmap_holds_the_pod_until_the_jobs_deadline_which_names_it(
    farm: Farm, tls_registry: TlsRegistry
) -> None:
    """ca_bundle_configmap set, the ConfigMap never created: the kubelet keeps the pod in
    ContainerCreating (FailedMount), so the Job's activeDeadlineSeconds ends the scan,
    whose reason says so and names the ConfigMap to check."""
    status, _, _, error, _ = _run_scan(farm, tls_registry, configmap=True, create=False)
    assert status == "timeout", error
    assert "exceeded its deadline of 8s" in error, error
    assert f"ConfigMap {SCAN_NAMESPACE}/internal-ca (ca_bundle_configmap)" in error, error
    events = farm.clusters["alpha"].list("Event", SCAN_NAMESPACE)
    mounts = {e["message"] for e in events if e.get("reason") == "FailedMount"}
    assert mounts == {'MountVolume.SetUp failed for volume "ca" : configmap "internal-ca" '
                      "not found"}, mounts  # fmt: skip
