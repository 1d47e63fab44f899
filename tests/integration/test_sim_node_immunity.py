"""The emulator runs a node-mode scan of an image built to hide its own CVEs: they are reported.

The image (alpine with two planted CVEs, tests/data/advisories/basic.yaml) is
pushed with an image config whose ``WorkingDir`` holds a ``.trivyignore`` and a
``trivy.yaml`` hiding them and whose ``Env`` sets ``TRIVY_SEVERITY`` and
``TRIVY_IGNOREFILE`` to hide them too. The emulated kubelet applies the image's
``Env`` and ``WorkingDir`` the way a container runtime does (scanqueue.sim.podrun)
and runs the real Trivy chrooted into the image. Our scan Job
(``manifests.scan_job``) reports both CVEs; the control, the same Job without
our ``workingDir``, env and ``--config``/``--ignorefile``, is fooled.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from scanqueue import manifests
from scanqueue.sim import imagefs
from scanqueue.sim.apierrors import ApiError
from tests.conftest import REGISTRY_PASSWORD, REGISTRY_USER
from tests.integration import test_sim_trivy
from tests.support import trivy_fixtures
from tests.support.sim_fixtures import SimCluster
from tests.support.trivy_fixtures import EXPECTED, IMAGES, findings

NS = test_sim_trivy.NS
HIDING_FILES = {
    "app/.trivyignore": b"CVE-2099-1001\nCVE-2099-1002\n",
    "app/trivy.yaml": b"severity:\n  - LOW\nvulnerability:\n  ignore-status:\n    - fixed\n",
    "app/hide": b"CVE-2099-1001\nCVE-2099-1002\n",
}
HIDING_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "TRIVY_SEVERITY=LOW",
    "TRIVY_IGNOREFILE=/app/hide",
    "TRIVY_IGNORE_STATUS=fixed",
]


def _blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _push_with_config(destination: str, contents: dict[str, bytes], config: dict[str, Any]) -> str:
    """Push a one-layer OCI image whose config carries ``config`` (Env, WorkingDir)."""
    skopeo = shutil.which("skopeo")
    assert skopeo is not None, "skopeo is needed (make install)"
    with tempfile.TemporaryDirectory(prefix="sq-hiding-") as tmp:
        layout = Path(tmp, "layout")
        (layout / "blobs" / "sha256").mkdir(parents=True)
        (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        layer = imagefs.layer(contents)
        image_config = {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {
                "type": "layers",
                "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"],
            },
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                **_blob(layout, json.dumps(image_config).encode()),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", **_blob(layout, layer)}
            ],
        }
        entry = _blob(layout, json.dumps(manifest).encode())
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **entry,
                    "annotations": {"org.opencontainers.image.ref.name": "image"},
                }
            ],
        }
        (layout / "index.json").write_text(json.dumps(index))
        digest_file = Path(tmp, "digest")
        done = subprocess.run(
            [skopeo, "copy", "--quiet", "--dest-tls-verify=false", "--dest-creds",
             f"{REGISTRY_USER}:{REGISTRY_PASSWORD}", "--digestfile", str(digest_file),
             f"oci:{layout}:image", destination],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return digest_file.read_text().strip()


def _run(sim: SimCluster, spec: manifests.ScanSpec, *, edit: Any = None) -> tuple[str, str]:
    """Create the scan Job, resume it (again if the Job controller changed it meanwhile),
    and return the pod's phase and log."""
    job = manifests.scan_job(spec)
    if edit is not None:
        edit(job)
    sim.create(job)
    deadline = time.monotonic() + 90
    while True:
        current = sim.get("Job", NS, spec.job_name)
        assert current is not None
        current["spec"]["suspend"] = False
        try:
            sim.replace(current)
            break
        except ApiError:
            if time.monotonic() > deadline:
                raise
    while time.monotonic() < deadline:
        pods = [
            p
            for p in sim.list("Pod", NS)
            if (p["metadata"].get("labels") or {}).get("job-name") == spec.job_name
        ]
        if pods and pods[0]["status"].get("phase") in ("Succeeded", "Failed"):
            log = sim.pod_log(NS, pods[0]["metadata"]["name"], manifests.CONTAINER) or ""
            return str(pods[0]["status"]["phase"]), log
        time.sleep(0.1)
    raise AssertionError(f"scan pod of {spec.job_name} did not finish")


def _without_our_hardening(job: dict[str, Any]) -> None:
    """The scan container as built before: no workingDir, no env, no --config/--ignorefile."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    container.pop("workingDir")
    container.pop("env")
    args = container["args"]
    for flag in ("--config", "--ignorefile"):
        i = args.index(flag)
        del args[i : i + 2]


@pytest.fixture
def hiding_image(sim: SimCluster) -> tuple[str, str]:
    sim.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    sim.set_advisories(trivy_fixtures.ADVISORIES)  # the test DB: two CVEs for this alpine
    registry = sim.registry
    repo = f"{registry.host}/team/hides-its-cves"
    contents = {**IMAGES["alpine"], **HIDING_FILES}
    digest = _push_with_config(
        f"docker://{repo}:1", contents, {"Env": HIDING_ENV, "WorkingDir": "/app"}
    )
    sim.trivy.node_auth[registry.host] = (REGISTRY_USER, REGISTRY_PASSWORD)  # the node's login
    app = {"name": "app", "image": f"{repo}@{digest}"}
    sim.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": NS},
                "spec": {"nodeName": "node-1", "containers": [app]}})  # fmt: skip
    sim.wait_for(
        lambda: (sim.get("Pod", NS, "app") or {}).get("status", {}).get("phase") == "Running",
        timeout=30,
    )
    return repo, digest


def test_a_node_mode_scan_of_an_image_hiding_its_cves_reports_them(
    sim: SimCluster, hiding_image: tuple[str, str]
) -> None:
    repo, digest = hiding_image
    planted = {v for v, *_ in EXPECTED["alpine"]}

    control = test_sim_trivy._spec(repo, digest, mode="node", node_name="node-1", credential=None)
    phase, log = _run(sim, control, edit=_without_our_hardening)
    assert phase == "Succeeded", log
    fooled = {v for v, *_ in findings(json.loads(log))}
    assert fooled < planted, "the image's WORKDIR and ENV must fool a scan without our settings"

    ours = test_sim_trivy._spec(
        repo, digest, mode="node", node_name="node-1", credential=None, attempt=2
    )
    phase, log = _run(sim, ours)
    assert phase == "Succeeded", log
    assert findings(json.loads(log)) == EXPECTED["alpine"]
