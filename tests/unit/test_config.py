"""Settings: strict parsing of the TOML file and SCANQUEUE_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanqueue import config, errors

GOOD = """
[database]
url = "postgresql://scan@db:5432/scanqueue"

[scan]
rescan_interval_seconds = 3600
insecure_registries = ["registry.local:5000"]

[[clusters]]
name = "prod-eu"
kubeconfig = "/etc/scanqueue/prod-eu.yaml"
context = "prod"
namespaces = ["team-a", "team-b"]
scan_mode = "registry"
max_inflight = 4

[[clusters]]
name = "dev"
in_cluster = true
exclude_namespaces = ["kube-system"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scanqueue.toml"
    path.write_text(text)
    return path


def test_good_file_is_read_into_grouped_settings(tmp_path: Path) -> None:
    settings = config.load(_write(tmp_path, GOOD), environ={})
    assert settings.database.url == "postgresql://scan@db:5432/scanqueue"
    assert settings.broker.url == "redis://127.0.0.1:6379/0"
    assert settings.scan.rescan_interval_seconds == 3600
    assert settings.scan.insecure_registries == ("registry.local:5000",)
    prod = settings.cluster("prod-eu")
    assert prod.namespaces == ("team-a", "team-b")
    assert prod.scan_mode == "registry"
    assert prod.max_inflight == 4
    assert settings.cluster("dev").in_cluster is True
    assert settings.cluster("dev").scan_namespace == "scanqueue-scans"


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    env = {
        "SCANQUEUE_DATABASE_URL": "postgresql://other/db",
        "SCANQUEUE_SCAN_RESCAN_INTERVAL_SECONDS": "60",
        "SCANQUEUE_SCAN_VERIFY_WITH_REGISTRY": "false",
        "SCANQUEUE_SCAN_INSECURE_REGISTRIES": "a:5000, b",
    }
    settings = config.load(_write(tmp_path, GOOD), environ=env)
    assert settings.database.url == "postgresql://other/db"
    assert settings.scan.rescan_interval_seconds == 60
    assert settings.scan.verify_with_registry is False
    assert settings.scan.insecure_registries == ("a:5000", "b")


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    assert config.load(environ={"SCANQUEUE_CONFIG": str(path)}).source == str(path)


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="not found"):
        config.load(environ={"SCANQUEUE_CONFIG": str(tmp_path / "nope.toml")})


def test_missing_default_file_gives_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = config.load(environ={})
    assert settings.source == "defaults"
    assert settings.clusters == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[database]\nurl = 'x'\npoolsize = 3\n", r"database\.poolsize: unknown key"),
        ("[databse]\nurl = 'x'\n", "unknown section or key 'databse'"),
        (
            "[[clusters]]\nname = 'a'\nkubeconfig = 'k'\nnamespace = ['x']\n",
            r"clusters\[0\]\.namespace: unknown key",
        ),
    ],
)
def test_unknown_keys_are_errors_naming_key_and_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(errors.ConfigError, match=message) as caught:
        config.load(path, environ={})
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[scan]\nrescan_interval_seconds = 'daily'\n",
            r"scan\.rescan_interval_seconds: expected an integer",
        ),
        ("[scan]\nverify_with_registry = 1\n", "expected true or false"),
        (
            "[[clusters]]\nname = 'a'\nkubeconfig = 'k'\nscan_mode = 'fast'\n",
            "'fast' is not one of auto, registry, node",
        ),
        ("[[clusters]]\nname = 'Prod_EU'\nkubeconfig = 'k'\n", "must be a lowercase DNS label"),
        ("[[clusters]]\nname = 'a'\n", "set kubeconfig = PATH or in_cluster = true"),
        (
            "[[clusters]]\nname = 'a'\nin_cluster = true\n" * 2,
            "used twice",
        ),
        ("[scan]\nsoft_time_limit_seconds = 1300\n", "soft_time_limit_seconds must be below"),
        ("[scan]\njob_deadline_seconds = 1000\n", "job_deadline_seconds must be below"),
        ("[broker]\nvisibility_timeout_seconds = 1000\n", "visibility_timeout_seconds must exceed"),
        ("[[clusters]]\nname = 'a'\nin_cluster = true\nmax_inflight = 0\n", "at least 1"),
        ("not toml at all = = =", "cannot read settings"),
    ],
)
def test_bad_values_are_errors_naming_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        config.load(_write(tmp_path, text), environ={})


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="SCANQUEUE_SCAN_JOB_DEADLINE_SECONDS"):
        config.load(_write(tmp_path, GOOD), environ={"SCANQUEUE_SCAN_JOB_DEADLINE_SECONDS": "ten"})


def test_unknown_environment_variable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="SCANQUEUE_DATABSE_URL"):
        config.load(_write(tmp_path, GOOD), environ={"SCANQUEUE_DATABSE_URL": "x"})
    with pytest.raises(errors.ConfigError, match="SCANQUEUE_SCAN_NOPE"):
        config.load(_write(tmp_path, GOOD), environ={"SCANQUEUE_SCAN_NOPE": "x"})


def test_unknown_cluster_lookup_names_known_ones(tmp_path: Path) -> None:
    settings = config.load(_write(tmp_path, GOOD), environ={})
    with pytest.raises(errors.ConfigError, match="known: prod-eu, dev"):
        settings.cluster("staging")
