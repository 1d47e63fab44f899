"""deploy/: the worker Deployment serves its metrics the way workers/app.py serves them."""

from __future__ import annotations

from typing import Any

from tests.support import ops_commands
from tests.unit import test_deploy


def _worker() -> dict[str, Any]:
    deployment = test_deploy._one("Deployment", "scanqueue-worker", test_deploy.FARM_NS)
    return deployment["spec"]["template"]


def _option(command: list[str], name: str) -> str:
    return next(a.partition("=")[2] for a in command if a.startswith(f"{name}="))


def test_worker_serves_metrics_on_the_port_it_declares_and_annotates() -> None:
    template = _worker()
    container = template["spec"]["containers"][0]
    port = _option(container["command"], "--metrics-port")
    assert ops_commands.problems(container["command"]) == []
    assert {"name": "metrics", "containerPort": int(port), "protocol": "TCP"} in container["ports"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == port


def test_worker_metrics_directory_is_a_mounted_empty_dir() -> None:
    template = _worker()
    container = template["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    directory = env["PROMETHEUS_MULTIPROC_DIR"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
    assert not mount.get("readOnly", False)
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume


def test_an_option_celery_does_not_know_is_still_refused() -> None:
    found = ops_commands.problems(["celery", "-A", "workers.app", "worker", "--metrics-prot=1"])
    assert found == ["celery worker has no option --metrics-prot"]
