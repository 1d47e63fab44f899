"""deploy/: the farm's secrets are files in the pods that need them, never env vars.

An environment variable is inherited by every child process (Celery's pool,
a probe's ``sh -c``) and shown by ``kubectl describe``-style tooling; a file
on a Secret volume is read by the one process that opens it. The secrets are
the passwords (``database.password_file``, ``broker.password_file``) and the
alert webhook URLs (``alerts.webhooks_file``: a URL may carry a token). The
settings read every file they name when they load, so the shared ConfigMap
names none: each pod names the files it mounts (``SCANQUEUE_*_FILE``), and
mounts exactly the keys its role needs, readable by its non-root user.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from scanqueue import config, errors
from tests.unit import test_deploy

FARM_NS = test_deploy.FARM_NS
SECRETS_DIR = "/etc/scanqueue/secrets"
# (pod, variable) pairs allowed to take a secret as an env var, and why.
ENV_SECRETS_ALLOWED = {
    # trivy server takes --token from TRIVY_TOKEN; one process, httpGet probes.
    ("trivy-server", "TRIVY_TOKEN"),
}
SECRET_FILE_KEYS = (
    "database.password_file",
    "broker.password_file",
    "alerts.webhooks_file",
    "rescan.trivy_server_token_file",
)

NEEDS = {  # the settings naming a secret file, per command: what it must read, nothing more
    ("scanqueue", "migrate"): {"database.password_file"},
    ("scanqueue", "exporter"): {"database.password_file"},
    ("scanqueue", "watch"): {"database.password_file", "broker.password_file"},
    # the worker POSTs the alerts (control queue); beat schedules their dispatch only
    # when a webhook is configured (workers/alerts.py), so both read the webhook URLs.
    # The worker also runs rescans (plan and run tasks) against the optional Trivy server.
    ("celery", "worker"): {
        "database.password_file",
        "broker.password_file",
        "alerts.webhooks_file",
        "rescan.trivy_server_token_file",
    },
    ("celery", "beat"): {"broker.password_file", "alerts.webhooks_file"},
    ("celery", "flower"): {"broker.password_file"},
}


def _needs(container: dict[str, Any]) -> set[str]:
    command = container["command"]
    words = [w for w in command[1:] if not w.startswith("-") and w != "workers.app"]
    key = (command[0], words[0])
    assert key in NEEDS, f"unknown farm command {command}: say what it needs in NEEDS"
    return NEEDS[key]


def _env_name(setting: str) -> str:
    return "SCANQUEUE_" + setting.replace(".", "_").upper()


def _environ(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _named_files(container: dict[str, Any]) -> dict[str, str]:
    """The secret files the container's settings name (ConfigMap, then its environment)."""
    data = test_deploy.config_map_settings()
    env = _environ(container)
    named = {}
    for setting in SECRET_FILE_KEYS:
        section, _, key = setting.partition(".")
        value = env.get(_env_name(setting), data.get(section, {}).get(key, ""))
        if value:
            named[setting] = value
    return named


@dataclasses.dataclass(frozen=True)
class SecretFile:
    secret: str  # the Secret's name (its template is in deploy/templates/)
    key: str
    optional: bool  # the volume's: absent Secret, no file, and the pod starts anyway

    def value(self) -> str:
        return str(test_deploy._one("Secret", self.secret, FARM_NS)["stringData"][self.key])


def _secret_items(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, SecretFile]:
    """The files the container sees from Secret volumes: path -> where it comes from."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if not secret:
            continue
        template = test_deploy._one("Secret", secret["secretName"], FARM_NS)
        items = secret.get("items") or [{"key": k, "path": k} for k in template["stringData"]]
        for item in items:
            assert item["key"] in template["stringData"], item
            found = SecretFile(secret["secretName"], item["key"], secret.get("optional", False))
            files[f"{mount['mountPath']}/{item['path']}"] = found
    return files


def _mounted_files(pod: dict[str, Any], container: dict[str, Any]) -> set[str]:
    return set(_secret_items(pod, container))


FARM_PODS = [
    (name, pod)
    for name, pod in test_deploy._pod_specs(test_deploy.APPLIED)
    if name.startswith("scanqueue-")
]


FARM_CONTAINERS = [(name, pod, c) for name, pod in FARM_PODS for c in pod["containers"]]
FARM_IDS = [name for name, _, _ in FARM_CONTAINERS]


def test_the_config_map_names_no_secret_file_and_holds_no_secret() -> None:
    """Every process that loads the settings reads the files they name: the shared
    ConfigMap naming one would stop every pod that does not mount it."""
    data = test_deploy.config_map_settings()
    for setting in SECRET_FILE_KEYS:
        section, _, key = setting.partition(".")
        assert key not in data.get(section, {}), f"{setting}: name it in the pods that mount it"
    for section in ("database", "broker"):
        assert not re.search(r"://[^/@]*:[^/@]*@", data[section]["url"]), section
    assert not [k for k in data.get("alerts", {}) if k.endswith("_urls")], (
        "webhook URLs may carry tokens: the Secret's alert-webhooks.toml holds them"
    )


@pytest.mark.parametrize(("name", "pod", "container"), FARM_CONTAINERS, ids=FARM_IDS)
def test_each_pod_names_and_mounts_exactly_the_secret_files_its_role_needs(
    name: str, pod: dict[str, Any], container: dict[str, Any]
) -> None:
    named = _named_files(container)
    assert set(named) == _needs(container), name
    wanted = set(named.values())
    if any(a.startswith("--conf=") for a in container["command"]):  # flowerconfig.py
        wanted.add(f"{SECRETS_DIR}/flower-basic-auth")
    assert _mounted_files(pod, container) == wanted, name


def _pod_settings(
    name: str,
    pod: dict[str, Any],
    container: dict[str, Any],
    tmp_path: Path,
    *,
    optional_present: bool,
    data: dict[str, Any] | None = None,
) -> config.Settings:
    """The settings as the pod's process builds them (config.load checks the files they
    name): its ConfigMap, its environment, and its Secret files, the templates' values,
    under ``tmp_path``; an optional Secret's files only when ``optional_present``."""
    for path, source in _secret_items(pod, container).items():
        if source.optional and not optional_present:
            continue
        local = tmp_path / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(source.value(), encoding="utf-8")
    environ = {
        var: str(tmp_path) + value if value.startswith("/etc/scanqueue/") else value
        for var, value in _environ(container).items()
        if var.startswith("SCANQUEUE_") and var != "SCANQUEUE_CONFIG"
    }
    data = test_deploy.config_map_settings() if data is None else data
    return config.from_mapping(data, environ=environ, source=f"{name} pod")


@pytest.mark.parametrize("optional_present", [True, False], ids=["optional", "without"])
@pytest.mark.parametrize(("name", "pod", "container"), FARM_CONTAINERS, ids=FARM_IDS)
def test_each_pod_loads_its_settings_with_only_the_files_it_mounts(
    name: str, pod: dict[str, Any], container: dict[str, Any], tmp_path: Path,
    optional_present: bool,
) -> None:  # fmt: skip
    """With the optional Secrets created or not (the Trivy server's token)."""
    settings = _pod_settings(name, pod, container, tmp_path, optional_present=optional_present)
    assert settings.clusters


def test_a_worker_with_rescans_on_needs_the_trivy_server_token_and_reads_it(
    tmp_path: Path,
) -> None:
    """[rescan] of 30-config.yaml uncommented: the token of the optional Secret is read at
    load; without the Secret the worker says which file it misses."""
    ((name, pod, worker),) = [c for c in FARM_CONTAINERS if c[0] == "scanqueue-worker"]
    data = test_deploy.config_map_settings()
    data["rescan"] = {"enabled": True, "trivy_server": "http://trivy-server.scanqueue.svc:4954"}
    settings = _pod_settings(name, pod, worker, tmp_path / "on", optional_present=True, data=data)
    token = config.read_password_file(
        settings.rescan.trivy_server_token_file, "rescan.trivy_server_token_file"
    )
    assert token == test_deploy._one("Secret", "trivy-server-token", FARM_NS)["stringData"]["token"]
    with pytest.raises(errors.ConfigError, match=r"rescan\.trivy_server_token_file: cannot read"):
        _pod_settings(name, pod, worker, tmp_path / "off", optional_present=False, data=data)


def _webhooks_template() -> str:
    template = test_deploy._one("Secret", "scanqueue", FARM_NS)
    return str(template["stringData"]["alert-webhooks.toml"])


def test_the_webhooks_template_sends_nothing_until_filled_in(tmp_path: Path) -> None:
    path = tmp_path / "alert-webhooks.toml"
    path.write_text(_webhooks_template(), encoding="utf-8")
    alerts = config.from_mapping({"alerts": {"webhooks_file": str(path)}}).alerts
    assert (alerts.generic_urls, alerts.alertmanager_urls, alerts.slack_urls) == ((), (), ())


def test_the_webhooks_template_examples_are_what_the_settings_accept(tmp_path: Path) -> None:
    examples = re.findall(r"^#\s+(\w+_urls = .+)$", _webhooks_template(), flags=re.M)
    assert len(examples) == 3
    path = tmp_path / "alert-webhooks.toml"
    path.write_text("\n".join(examples) + "\n", encoding="utf-8")
    alerts = config.from_mapping({"alerts": {"webhooks_file": str(path)}}).alerts
    assert len(alerts.generic_urls) == len(alerts.alertmanager_urls) == len(alerts.slack_urls) == 1


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
            if env["name"].endswith("_FILE"):  # a path to a mounted file, not its content
                assert env["value"] in _secret_items(pod, container), env
                continue
            assert not any(word in env["name"] for word in ("PASSWORD", "PGPASS")), env


def test_no_long_lived_service_account_token_is_shipped() -> None:
    for _, doc in test_deploy.DOCS:
        assert doc.get("type") != "kubernetes.io/service-account-token", doc["metadata"]["name"]
