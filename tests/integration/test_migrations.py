"""The migration mechanism against a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from scanqueue import cli, errors, store


def _write(directory: Path, name: str, sql: str) -> None:
    (directory / name).write_text(sql)


def test_migrate_applies_in_order_and_records_versions(
    empty_database_url: str, tmp_path: Path
) -> None:
    _write(tmp_path, "0002_add_column.sql", "ALTER TABLE things ADD COLUMN size int;")
    _write(tmp_path, "0001_things.sql", "CREATE TABLE things (id int primary key);")
    with store.connect(empty_database_url) as conn:
        applied = store.migrate(conn, directory=tmp_path)
        assert [m.version for m in applied] == [1, 2]
        assert store.applied_versions(conn) == [1, 2]
        conn.execute("INSERT INTO things (id, size) VALUES (1, 2)")


def test_migrate_again_is_a_no_op(empty_database_url: str, tmp_path: Path) -> None:
    _write(tmp_path, "0001_things.sql", "CREATE TABLE things (id int primary key);")
    with store.connect(empty_database_url) as conn:
        store.migrate(conn, directory=tmp_path)
        assert store.migrate(conn, directory=tmp_path) == []
        rows = conn.execute("SELECT version, name FROM scanqueue_migrations").fetchall()
    assert rows == [(1, "things")]


def test_only_new_migrations_run_later(empty_database_url: str, tmp_path: Path) -> None:
    _write(tmp_path, "0001_things.sql", "CREATE TABLE things (id int primary key);")
    with store.connect(empty_database_url) as conn:
        store.migrate(conn, directory=tmp_path)
        _write(tmp_path, "0002_more.sql", "CREATE TABLE more_things (id int);")
        assert [m.name for m in store.migrate(conn, directory=tmp_path)] == ["more"]


def test_failing_migration_is_rolled_back_and_named(
    empty_database_url: str, tmp_path: Path
) -> None:
    _write(tmp_path, "0001_ok.sql", "CREATE TABLE ok (id int);")
    _write(tmp_path, "0002_broken.sql", "CREATE TABLE broken (id int); SELECT * FROM nowhere;")
    with store.connect(empty_database_url) as conn:
        with pytest.raises(errors.PermanentError, match=r"0002_broken\.sql"):
            store.migrate(conn, directory=tmp_path)
        assert store.applied_versions(conn) == []
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM ok")


def test_misnamed_migration_file_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "create.sql", "SELECT 1;")
    with pytest.raises(errors.PermanentError, match=r"0001_create_tables\.sql"):
        store.migrations(tmp_path)


def test_cli_migrate_twice_on_empty_database(
    empty_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["migrate", "--database-url", empty_database_url]) == 0
    first = capsys.readouterr().out
    assert "applied 0001_" in first
    assert cli.main(["migrate", "--database-url", empty_database_url]) == 0
    assert "database is up to date" in capsys.readouterr().out
    with store.connect(empty_database_url) as conn:
        assert store.applied_versions(conn) == [m.version for m in store.migrations()]


def test_unreachable_database_is_a_temporary_error_without_password() -> None:
    with (
        pytest.raises(errors.TemporaryError) as caught,
        store.connect("postgresql://u:hunter2-canary@127.0.0.1:1/db"),
    ):
        pass
    assert "hunter2-canary" not in str(caught.value)
