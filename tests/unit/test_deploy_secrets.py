"""deploy/: the farm's own passwords are files in the pods that need them, never env vars.

An environment variable is inherited by every child process (Celery's pool,
a probe's ``sh -c``) and shown by ``kubectl describe``-style tooling; a file
on a Secret volume is read by the one process that opens it. The ConfigMap's
settings name the files (``password_file``); each pod mounts exactly the keys
its role needs, readable by its non-root user.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.unit import test_deploy

FARM_NS = test_deploy.FARM_NS
SECRETS_DIR = "/etc/scanqueue/secrets"
# (pod, variable) pairs allowed to take a secret as an env var, and why.
ENV_SECRETS_ALLOWED = {
    # trivy server takes --token from TRIVY_TOKEN; one process, httpGet probes.
    ("trivy-server", "TRIVY_TOKEN"),
}


NEEDS = {  # the settings sections whose password each command needs
    ("scanqueue", "migrate"): {"database"},
    ("scanqueue", "exporter"): {"database"},
    ("scanqueue", "watch"): {"database", "broker"},
    ("celery", "worker"): {"database", "broker"},
    ("celery", "beat"): {"broker"},
    ("celery", "flower"): {"broker"},
}


def _needs(container: dict[str, Any]) -> set[str]:
    command = container["command"]
    words = [w for w in command[1:] if not w.startswith("-") and w != "workers.app"]
    key = (command[0], words[0])
    assert key in NEEDS, f"unknown farm command {command}: say what it needs in NEEDS"
    return NEEDS[key]


def _password_files() -> dict[str, str]:
    data = test_deploy.config_map_settings()
    return {section: data[section]["password_file"] for section in ("database", "broker")}


def _mounted_files(pod: dict[str, Any], container: dict[str, Any]) -> set[str]:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    template = test_deploy._one("Secret", "scanqueue", FARM_NS)
    files = set()
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if not secret:
            continue
        assert secret["secretName"] == "scanqueue"
        items = secret.get("items") or [{"key": k, "path": k} for k in template["stringData"]]
        for item in items:
            assert item["key"] in template["stringData"], item
            files.add(f"{mount['mountPath']}/{item['path']}")
    return files


FARM_PODS = [
    (name, pod)
    for name, pod in test_deploy._pod_specs(test_deploy.APPLIED)
    if name.startswith("scanqueue-")
]


def test_the_settings_name_password_files_and_urls_carry_none() -> None:
    data = test_deploy.config_map_settings()
    for section, path in _password_files().items():
        assert path.startswith(SECRETS_DIR + "/"), section
        assert not re.search(r"://[^/@]*:[^/@]*@", data[section]["url"]), section


@pytest.mark.parametrize(("name", "pod"), FARM_PODS, ids=[n for n, _ in FARM_PODS])
def test_each_pod_mounts_exactly_the_password_files_its_role_needs(
    name: str, pod: dict[str, Any]
) -> None:
    files = _password_files()
    for container in pod["containers"]:
        wanted = {files[section] for section in _needs(container)}
        if any(a.startswith("--conf=") for a in container["command"]):  # flowerconfig.py
            wanted.add(f"{SECRETS_DIR}/flower-basic-auth")
        assert _mounted_files(pod, container) == wanted, name


@pytest.mark.parametrize(("name", "pod"), FARM_PODS, ids=[n for n, _ in FARM_PODS])
def test_the_password_files_are_readable_by_the_pod_user_only(
    name: str, pod: dict[str, Any]
) -> None:
    context = pod["securityContext"]
    for volume in pod.get("volumes", []):
        secret = volume.get("secret")
        if secret:
            assert context["fsGroup"] == context["runAsGroup"], "the files' group is the user's"
            assert secret["defaultMode"] == 0o440, "owner root, group the pod's: nobody else"


@pytest.mark.parametrize(
    ("name", "pod"), test_deploy.ALL_PODS, ids=[n for n, _ in test_deploy.ALL_PODS]
)
def test_no_secret_is_an_environment_variable_but_the_allowed_ones(
    name: str, pod: dict[str, Any]
) -> None:
    for container in pod["containers"]:
        for env in container.get("env", []):
            if "secretKeyRef" in env.get("valueFrom", {}):
                assert (name, env["name"]) in ENV_SECRETS_ALLOWED, (name, env["name"])
                assert "exec" not in container.get("livenessProbe", {}), "a probe shell inherits it"
                assert "exec" not in container.get("readinessProbe", {})
            assert not any(word in env["name"] for word in ("PASSWORD", "PGPASS")), env


def test_no_long_lived_service_account_token_is_shipped() -> None:
    for _, doc in test_deploy.DOCS:
        assert doc.get("type") != "kubernetes.io/service-account-token", doc["metadata"]["name"]
