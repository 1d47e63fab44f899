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
