"""Postgres: migrations, writes and report queries. The only module that imports psycopg.

Migrations are plain numbered SQL files (``NNNN_name.sql``) in
``scanqueue/migrations``, applied in order, each in its own transaction, and
recorded in ``scanqueue_migrations``. An advisory lock serialises concurrent
``migrate`` calls (several workers starting at once). Rows written here never
hold a credential value: only where a credential came from.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from scanqueue import errors

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_ID = 0x5CA9_0E0E  # advisory lock key for migrations


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Return the migrations found in ``directory``, ordered by version.

    Raises ``PermanentError`` for a misnamed file or a version used twice.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if not match:
            raise errors.PermanentError(
                f"migration {path}: name must look like 0001_create_tables.sql"
            )
        version = int(match.group(1))
        if version in found:
            raise errors.PermanentError(
                f"migration version {version} is used by {found[version].path.name} and {path.name}"
            )
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


@contextmanager
def connect(url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """Open one connection to ``url``; translate connection failures to ``TemporaryError``."""
    try:
        conn = psycopg.connect(url, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise errors.TemporaryError(f"cannot connect to Postgres: {_no_password(str(e))}") from e
    try:
        yield conn
    finally:
        conn.close()


def migrate(
    conn: psycopg.Connection[tuple[object, ...]], *, directory: Path = MIGRATIONS_DIR
) -> list[Migration]:
    """Apply the migrations not yet recorded; return those applied now (empty when up to date)."""
    pending = migrations(directory)
    applied_now: list[Migration] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS scanqueue_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row[0] for row in conn.execute("SELECT version FROM scanqueue_migrations")}
        for migration in pending:
            if migration.version in done:
                continue
            sql = migration.path.read_text(encoding="utf-8")
            try:
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute(
                        "INSERT INTO scanqueue_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
            except psycopg.Error as e:
                raise errors.PermanentError(f"migration {migration.path.name} failed: {e}") from e
            applied_now.append(migration)
    return applied_now


def applied_versions(conn: psycopg.Connection[tuple[object, ...]]) -> list[int]:
    """Return the migration versions recorded in the database, ascending."""
    exists = conn.execute("SELECT to_regclass('scanqueue_migrations')").fetchone()
    if exists is None or exists[0] is None:
        return []
    rows = conn.execute("SELECT version FROM scanqueue_migrations ORDER BY 1").fetchall()
    return [int(str(row[0])) for row in rows]


def _no_password(message: str) -> str:
    """Drop a password that libpq may echo back from a connection string."""
    return re.sub(r"(password=)\S+", r"\1***", re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", message))
