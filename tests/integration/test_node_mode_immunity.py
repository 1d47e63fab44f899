"""Node mode, with the real Trivy: an image built to hide its own CVEs still reports them.

In node mode the scan container is the target image, so a container runtime
starts Trivy in the image's WORKDIR with the image's ENV under the pod's env.
This test does what the runtime does, with the real Trivy binary and the
test DB: the image's files (alpine with two planted CVEs) plus one way of
hiding them (a ``.trivyignore`` or ``trivy.yaml`` in its WORKDIR, or a
``TRIVY_*`` variable in its ENV). The container built by
``manifests.scan_job`` (its args, ``workingDir``, env and the downward-API
files) reports both CVEs; the control, the scan container as it was built
before (no ``workingDir``, no env of ours, no ``--config``/``--ignorefile``),
reports fewer: the hiding works, and our manifest defeats it.

The container's paths are mapped to directories of the test: ``/`` to the
image's root, ``/var/scanqueue`` (an emptyDir) and ``/var/scanqueue-config``
(the downward-API volume) to their own. Offline flags are added to both runs
(no network here); they change nothing about configuration precedence.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from scanqueue import config, manifests
from scanqueue.sim import imagefs, scanner
from tests.support import trivy_fixtures

WORKDIR = "app"  # the image's WORKDIR, /app
PLANTED = {"CVE-2099-1001", "CVE-2099-1002"}  # HIGH musl, CRITICAL busybox (basic.yaml)
OFFLINE = [*scanner.OFFLINE, "--skip-version-check", "--disable-telemetry"]

HIDING: dict[str, dict[str, Any]] = {
    ".trivyignore in WORKDIR": {"files": {".trivyignore": "CVE-2099-1001\nCVE-2099-1002\n"}},
    "trivy.yaml severity in WORKDIR": {"files": {"trivy.yaml": "severity:\n  - LOW\n"}},
    "trivy.yaml ignore-status in WORKDIR": {
        "files": {"trivy.yaml": "vulnerability:\n  ignore-status:\n    - fixed\n"}
    },
    "TRIVY_SEVERITY in ENV": {"env": {"TRIVY_SEVERITY": "LOW"}},
    "TRIVY_IGNORE_STATUS in ENV": {"env": {"TRIVY_IGNORE_STATUS": "fixed"}},
    "TRIVY_IGNOREFILE in ENV": {
        "files": {"hide-these": "CVE-2099-1001\nCVE-2099-1002\n"},
        "env": {"TRIVY_IGNOREFILE": "<root>/app/hide-these"},
    },
}


def _spec() -> manifests.ScanSpec:
    return manifests.ScanSpec(
        cluster=config.ClusterSettings(name="c", kubeconfig="/k"),
        scan=config.ScanSettings(),
        image="registry.example.com/team/hides",
        digest="sha256:" + "ef" * 32,
        mode="node",
        scan_id="s",
        attempt=0,
        node_name="node-1",
    )


class Container:
    """The node-mode container's file system and process, laid out under ``base``."""

    def __init__(self, base: Path, hiding: dict[str, Any]) -> None:
        self.root = imagefs.write(base / "root", trivy_fixtures.IMAGES["alpine"])
        self.workdir = self.root / WORKDIR
        self.workdir.mkdir(exist_ok=True)
        for name, text in hiding.get("files", {}).items():
            (self.workdir / name).write_text(text)
        self.image_env = {
            k: v.replace("<root>", str(self.root)) for k, v in hiding.get("env", {}).items()
        }
        self.base = base
        self.volumes: dict[str, Path] = {}  # volume name -> its directory
        self.mounts: dict[str, Path] = {}  # mountPath in the container -> directory
        self.cache = trivy_fixtures.seeded_cache(base / "seed")

    def mount(self, container: dict[str, Any]) -> None:
        """A directory per volume (an emptyDir starts empty), mounted where the pod says."""
        for mount in container.get("volumeMounts", []):
            directory = self.volumes.setdefault(mount["name"], self.base / f"vol-{mount['name']}")
            directory.mkdir(exist_ok=True)
            self.mounts[mount["mountPath"]] = directory

    def host_path(self, path: str) -> str:
        """Where a path of the container lives in the test (longest mount first)."""
        for mount in sorted(self.mounts, key=len, reverse=True):
            if path == mount or path.startswith(mount + "/"):
                return str(self.mounts[mount]) + path[len(mount) :]
        return str(self.root) + path if path != "/" else str(self.root)

    def run(self, container: dict[str, Any], template: dict[str, Any]) -> set[str]:
        """Run the scan container as a runtime would; return the vulnerability ids found."""
        self.mount(container)
        self._fill_downward_api(template)
        args = [self._arg(a) for a in container["args"]]
        cache = args.index("--cache-dir") + 1
        args[cache] = str(self.cache)  # the seeded DB stands for the one Trivy would fetch
        env = dict(self.image_env)  # the image's ENV, then the container's env over it
        for variable in container.get("env", []):
            env[variable["name"]] = self._arg(variable.get("value", ""))
        cwd = self.host_path(container["workingDir"]) if "workingDir" in container else None
        done = scanner.run(
            [*args[:-1], *OFFLINE, args[-1]],
            env=env,
            cwd=cwd or str(self.workdir),  # no workingDir: the image's WORKDIR
            timeout=120,
        )
        assert done.exit_code == 0, done.stderr
        report = json.loads(done.stdout)
        return {v[0] for v in trivy_fixtures.findings(report)}

    def _arg(self, value: str) -> str:
        if value.startswith("/"):
            return ",".join(self.host_path(p) for p in value.split(","))
        return value

    def _fill_downward_api(self, template: dict[str, Any]) -> None:
        annotations = template["metadata"]["annotations"]
        for volume in template["spec"]["volumes"]:
            for item in (volume.get("downwardAPI") or {}).get("items", []):
                match = re.fullmatch(
                    r"metadata\.annotations\['(.+)'\]", item["fieldRef"]["fieldPath"]
                )
                assert match is not None, item
                if volume["name"] not in self.volumes:
                    continue  # not mounted by this container
                target = self.volumes[volume["name"]] / item["path"]
                target.write_text(annotations[match.group(1)])


def _ours() -> tuple[dict[str, Any], dict[str, Any]]:
    template = manifests.scan_job(_spec())["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return container, template


def _before_issue_20(container: dict[str, Any]) -> dict[str, Any]:
    """The scan container as built before: no workingDir, no env, no --config/--ignorefile."""
    args = list(container["args"])
    for flag in ("--config", "--ignorefile"):
        i = args.index(flag)
        del args[i : i + 2]
    return {k: v for k, v in container.items() if k not in ("workingDir", "env")} | {"args": args}


def test_without_hiding_both_runs_find_the_planted_cves(tmp_path: Path) -> None:
    container, template = _ours()
    box = Container(tmp_path, {})
    assert box.run(container, template) == PLANTED
    assert box.run(_before_issue_20(container), template) == PLANTED


@pytest.mark.parametrize("how", HIDING)
def test_an_image_cannot_hide_its_cves_from_our_scan(tmp_path: Path, how: str) -> None:
    container, template = _ours()
    box = Container(tmp_path, HIDING[how])
    hidden = box.run(_before_issue_20(container), template)
    assert hidden < PLANTED, f"the control should be fooled by {how}: the hiding does not work"
    assert box.run(container, template) == PLANTED
