"""farm: which farm `scanqueue run` starts, and when Flower may run without auth (pure parts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanqueue import config, errors, farm

CONFIGURED = config.from_mapping(
    {"clusters": [{"name": "prod-eu", "kubeconfig": "/k/prod-eu.yaml"}]}, source="scanqueue.toml"
)


def test_settings_with_clusters_run_the_configured_farm(tmp_path: Path) -> None:
    which, reason = farm.mode(CONFIGURED, environ={}, home=tmp_path)
    assert which == "configured"
    assert "prod-eu" in reason


def test_no_configuration_and_no_kubeconfig_runs_the_embedded_default(tmp_path: Path) -> None:
    which, reason = farm.mode(config.Settings(), environ={}, home=tmp_path)
    assert which == "embedded"
    assert reason.startswith("no scanqueue.toml and no kubeconfig")


def test_a_kubeconfig_without_configuration_is_never_scanned_by_default(tmp_path: Path) -> None:
    kube = tmp_path / ".kube"
    kube.mkdir()
    (kube / "config").write_text("apiVersion: v1\n")
    with pytest.raises(errors.ConfigError, match=r"kubeconfig exists .*\.kube/config.*--demo"):
        farm.mode(config.Settings(), environ={}, home=tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: v1\n")
    with pytest.raises(errors.ConfigError, match=r"other\.yaml"):
        farm.mode(config.Settings(), environ={"KUBECONFIG": str(other)}, home=tmp_path / "x")


def test_a_configuration_file_without_clusters_says_what_to_add(tmp_path: Path) -> None:
    settings = config.from_mapping({}, source="/etc/scanqueue.toml")
    with pytest.raises(errors.ConfigError, match=r"names no cluster.*\[\[clusters\]\]"):
        farm.mode(settings, environ={}, home=tmp_path)


def test_flower_takes_basic_auth_from_the_environment_and_names_only_the_users() -> None:
    auth, how = farm.flower_auth(
        {"FLOWER_BASIC_AUTH": "ops:Pw-1,viewer:Pw-2"},
        embedded=False,
        unauthenticated=False,
        address="0.0.0.0",
    )
    assert auth == "ops:Pw-1,viewer:Pw-2"
    assert "ops, viewer" in how
    assert "Pw-" not in how


def test_configured_farm_refuses_flower_without_basic_auth() -> None:
    with pytest.raises(errors.ConfigError, match="FLOWER_BASIC_AUTH is not set"):
        farm.flower_auth({}, embedded=False, unauthenticated=False, address="127.0.0.1")


def test_malformed_basic_auth_is_refused_without_echoing_it() -> None:
    with pytest.raises(errors.ConfigError) as raised:
        farm.flower_auth(
            {"FLOWER_BASIC_AUTH": "no-colon-secret"},
            embedded=False,
            unauthenticated=False,
            address="127.0.0.1",
        )
    assert "no-colon-secret" not in str(raised.value)


def test_unauthenticated_flower_is_allowed_on_loopback_only() -> None:
    auth, how = farm.flower_auth({}, embedded=False, unauthenticated=True, address="127.0.0.1")
    assert auth is None
    assert "NO authentication" in how
    auth, _ = farm.flower_auth(
        {"SQ_FLOWER_UNAUTHENTICATED": "1"}, embedded=False, unauthenticated=False, address="::1"
    )
    assert auth is None
    with pytest.raises(errors.ConfigError, match="loopback only"):
        farm.flower_auth({}, embedded=False, unauthenticated=True, address="0.0.0.0")


def test_embedded_default_generates_a_fresh_flower_password() -> None:
    first, _ = farm.flower_auth({}, embedded=True, unauthenticated=False, address="127.0.0.1")
    second, _ = farm.flower_auth({}, embedded=True, unauthenticated=False, address="127.0.0.1")
    assert first is not None and second is not None
    assert first.startswith(f"{farm.FLOWER_USER}:")
    assert len(first.partition(":")[2]) >= 20
    assert first != second


def test_commands_consume_every_cluster_queue_and_run_beat_as_its_own_role(
    tmp_path: Path,
) -> None:
    settings = config.from_mapping(
        {"clusters": [{"name": "a", "kubeconfig": "/k"}, {"name": "b", "kubeconfig": "/k"}]}
    )
    argv = farm.commands(
        settings=settings,
        state=tmp_path,
        options=farm.Options(),
        flower_port=5555,
        worker_metrics_port=9101,
        watcher_metrics_port=9100,
    )
    worker = argv["worker"]
    assert worker[worker.index("-Q") + 1] == "scan.a,scan.b,scanqueue.control"
    assert "-B" not in worker  # beat is its own role: its death is seen and it is restarted
    assert argv["beat"][argv["beat"].index("-A") + 1 : argv["beat"].index("-A") + 3] == [
        "workers.app",
        "beat",
    ]
    assert argv["beat"][argv["beat"].index("-s") + 1] == str(tmp_path / "beat-schedule")
    assert worker[worker.index("--metrics-port") + 1] == "9101"
    assert argv["watcher"][2:4] == ["scanqueue.cli", "watch"]
    assert "--port=5555" in argv["flower"]


def test_a_taken_flower_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    import socket
    import threading

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = farm.Options(demo=True, flower_port=port, state_dir=tmp_path / "state")
        with pytest.raises(errors.ConfigError, match=rf"127\.0\.0\.1:{port}.*--flower-port"):
            farm.run(options, stop=threading.Event(), environ={"HOME": str(tmp_path)})
    assert not (tmp_path / "state").exists()
