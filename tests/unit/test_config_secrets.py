"""database.password_file and broker.password_file: read strictly, never shown, never in a URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanqueue import config, errors

SECRET = "pw-canary-5e1f9a"


def _settings(tmp_path: Path, **sections: dict[str, str]) -> config.Settings:
    return config.from_mapping(dict(sections), environ={}, source="t.toml")


def test_the_passwords_come_from_their_files(tmp_path: Path) -> None:
    db, broker = tmp_path / "db", tmp_path / "redis"
    db.write_text(SECRET + "\n")
    broker.write_text("other-" + SECRET)
    settings = _settings(
        tmp_path,
        database={"url": "postgresql://u@h/d", "password_file": str(db)},
        broker={"url": "redis://h:6379/0", "password_file": str(broker)},
    )
    assert config.database_password(settings.database) == SECRET  # one newline dropped
    assert config.broker_password(settings.broker) == "other-" + SECRET
    assert SECRET not in repr(settings)


def test_without_a_file_there_is_no_password() -> None:
    settings = config.from_mapping({}, environ={})
    assert config.database_password(settings.database) is None
    assert config.broker_password(settings.broker) is None


def test_the_file_may_be_named_by_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "db"
    path.write_text(SECRET)
    settings = config.from_mapping(
        {}, environ={"SCANQUEUE_DATABASE_PASSWORD_FILE": str(path)}, source="t"
    )
    assert config.database_password(settings.database) == SECRET


@pytest.mark.parametrize("section", ["database", "broker"])
def test_a_missing_file_is_refused_when_the_settings_load(tmp_path: Path, section: str) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(errors.ConfigError, match=f"{section}.password_file: cannot read"):
        _settings(tmp_path, **{section: {"password_file": str(missing)}})


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_text("\n")
    with pytest.raises(errors.ConfigError, match="is empty"):
        _settings(tmp_path, broker={"password_file": str(path)})


def test_a_password_in_the_url_and_a_file_is_refused_without_showing_either(tmp_path: Path) -> None:
    path = tmp_path / "db"
    path.write_text(SECRET)
    with pytest.raises(errors.ConfigError) as raised:
        _settings(
            tmp_path,
            database={"url": "postgresql://u:inline-pw@h/d", "password_file": str(path)},
        )
    assert "remove the password from database.url" in str(raised.value)
    assert "inline-pw" not in str(raised.value) and SECRET not in str(raised.value)


def test_an_unreadable_file_error_never_shows_content(tmp_path: Path) -> None:
    path = tmp_path / "binary"
    path.write_bytes(b"\xff\xfe" + SECRET.encode())
    with pytest.raises(errors.ConfigError) as raised:
        config.read_password_file(str(path), "broker.password_file")
    assert SECRET not in str(raised.value)
    assert raised.value.__suppress_context__ is True  # a traceback shows no decode detail


ROOT = Path(__file__).resolve().parents[2]
CONNECTORS = {"connect", "pool", "client", "Publisher", "redis_answers"}
OWNERS = {"store", "dedupe", "publish", "demo_services", "db"}
# demo_services makes its own password-less local services (scanqueue demo); it passes none.
EXEMPT = {"scanqueue/demo_services.py"}


def _connector_calls() -> list[tuple[str, int, bool]]:
    """(file, line, passes password=) of every store/dedupe/publish connection made."""
    import ast

    found = []
    files = [*(ROOT / "scanqueue").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]
    for path in files:
        relative = str(path.relative_to(ROOT))
        if relative.startswith("scanqueue/sim/") or relative in EXEMPT:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value
            if node.func.attr in CONNECTORS and isinstance(owner, ast.Name) and owner.id in OWNERS:
                passes = any(k.arg == "password" for k in node.keywords)
                found.append((relative, node.lineno, passes))
    return found


def test_every_connection_the_farm_makes_passes_the_password_from_its_file() -> None:
    calls = _connector_calls()
    assert len(calls) >= 10, "the call finder finds nothing: the code moved"
    missing = [f"{f}:{line}" for f, line, passes in calls if not passes]
    assert missing == [], (
        "pass password=config.database_password(settings.database) or "
        f"config.broker_password(settings.broker): {missing}"
    )


def test_the_rescan_token_file_is_read_at_load_only_with_rescans_on(tmp_path: Path) -> None:
    """deploy/42-worker.yaml names it from an optional Secret that a farm without the Trivy
    server does not have: the worker must start without it while rescans are off."""
    missing = str(tmp_path / "trivy-server-token" / "token")
    off = config.from_mapping({"rescan": {"trivy_server_token_file": missing}})
    assert off.rescan.trivy_server_token_file == missing
    on = {"rescan": {"enabled": True, "trivy_server_token_file": missing}}
    with pytest.raises(errors.ConfigError, match=r"rescan\.trivy_server_token_file: cannot read"):
        config.from_mapping(on)


@pytest.mark.parametrize(
    "url",
    [f"http://scanner:{SECRET}@trivy:4954", f"https://{SECRET}@trivy.example:4954/x",
     f"http://u:{SECRET}@trivy", f"u:{SECRET}@trivy:4954"],
)  # fmt: skip
def test_a_trivy_server_url_with_user_information_is_refused(url: str) -> None:
    """A server URL reaches trivy's argv, scan rows and logs: a secret in it would leak
    there. Refused for the farm's rescans and for a cluster's scan Jobs, with where the
    token goes instead, and the URL never repeated."""
    with pytest.raises(errors.ConfigError) as rescan:
        config.from_mapping({"rescan": {"trivy_server": url}}, environ={}, source="t.toml")
    assert "rescan.trivy_server carries user information" in str(rescan.value)
    assert "rescan.trivy_server_token_file" in str(rescan.value)
    cluster = {"name": "a", "kubeconfig": "k", "trivy_server": url}
    with pytest.raises(errors.ConfigError) as scans:
        config.from_mapping({"clusters": [cluster]}, environ={}, source="t.toml")
    assert "clusters[0].trivy_server carries user information" in str(scans.value)
    assert "trivy_server_token_secret" in str(scans.value)
    assert SECRET not in str(rescan.value) + str(scans.value)


def test_a_trivy_server_url_without_user_information_is_taken() -> None:
    url = "http://trivy.scanqueue.svc:4954"
    settings = config.from_mapping(
        {"rescan": {"trivy_server": url},
         "clusters": [{"name": "a", "kubeconfig": "k", "trivy_server": url + "/?a=b@c"}]},
        environ={}, source="t.toml",
    )  # fmt: skip
    assert settings.rescan.trivy_server == url
