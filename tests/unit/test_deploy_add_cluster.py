"""Adding a cluster to the in-cluster deployment is one config change (docs/multi-cluster.md).

The steps of "Adding or removing a cluster", applied to deploy/: a [[clusters]]
table appended to the ConfigMap's scanqueue.toml gives the worker (which runs
without --queues), beat and the watcher the new cluster, with nothing else edited.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from scanqueue import config
from workers import app

ROOT = Path(__file__).resolve().parents[2]


def _config_toml() -> str:
    for doc in yaml.safe_load_all((ROOT / "deploy" / "30-config.yaml").read_text()):
        if doc and doc["kind"] == "ConfigMap":
            return str(doc["data"]["scanqueue.toml"])
    raise AssertionError("no ConfigMap in deploy/30-config.yaml")


def _worker_command() -> list[str]:
    docs: list[Any] = list(yaml.safe_load_all((ROOT / "deploy" / "42-worker.yaml").read_text()))
    (worker,) = [d for d in docs if d and d["kind"] == "Deployment"]
    return list(worker["spec"]["template"]["spec"]["containers"][0]["command"])


def test_a_cluster_added_to_the_config_map_gets_its_queue_on_every_worker() -> None:
    added = _config_toml() + (
        '\n[[clusters]]\nname = "prod-us"\nkubeconfig = "/etc/scanqueue/kube/prod-us.yaml"\n'
    )
    data = tomllib.loads(added)
    for section in ("database", "broker"):  # the password files exist only in the pods
        data.get(section, {}).pop("password_file", None)
    settings = config.from_mapping(data, environ={}, source="edited")
    assert "prod-us" in [c.name for c in settings.clusters]
    queues = {q.name for q in app.make_app(settings).conf.task_queues}
    assert {"scan.prod-us", "scanqueue.control"} <= queues
    assert not any(a.startswith(("--queues", "-Q")) for a in _worker_command())
