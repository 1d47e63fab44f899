"""Postgres connections, the pool and the migrations: the one door to the database.

Every other module of ``scanqueue.store`` gets its connections, its ``Connection``
type and its error translation (``translated``) from here, so that a psycopg
exception is turned into ``TemporaryError``/``PermanentError`` in one place.
Migrations are plain numbered SQL files (``NNNN_name.sql``) in
``scanqueue/migrations``, applied in order, each in its own transaction, and
recorded in ``scanqueue_migrations``; an advisory lock serialises concurrent
``migrate`` calls (several workers starting at once).

It must never connect at import time, never hold a module-level connection or
pool (callers open one per process and pass it down), and never let a password
from a connection string reach an exception message (every message it builds from
psycopg's text goes through ``logs.redact``, the one redaction of the package).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import psycopg
import psycopg_pool
from psycopg import pq

from scanqueue import errors, logs

Connection = psycopg.Connection[Any]
_P = ParamSpec("_P")
_R = TypeVar("_R")


def translated(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn psycopg's exceptions into ours, once, here: a lost connection, a deadlock or a
    serialisation failure is temporary (retry); data the database refuses is permanent."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return func(*args, **kwargs)
        except errors.ScanqueueError:
            raise
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as e:
            raise errors.TemporaryError(
                f"Postgres, in store.{func.__name__}: {type(e).__name__}: "
                + logs.redact(" ".join(str(e).split()))
            ) from e
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as e:
            raise errors.PermanentError(
                f"Postgres refused store.{func.__name__}: {type(e).__name__}: "
                + logs.redact(" ".join(str(e).split()))
            ) from e

    return wrapper


MIGRATIONS_DIR = Path(__file__).parent.parent / "migrations"
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
def connect(
    url: str, *, password: str | None = None
) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """Open one connection to ``url``; translate connection failures to ``TemporaryError``.

    ``password`` (``config.database_password``) is passed apart from the URL,
    which then carries none.
    """
    extra: dict[str, Any] = {"password": password} if password else {}
    try:
        conn = psycopg.connect(url, connect_timeout=10, **extra)
    except psycopg.OperationalError as e:
        raise errors.TemporaryError(f"cannot connect to Postgres: {logs.redact(str(e))}") from e
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


class Pool(psycopg_pool.ConnectionPool[Any]):
    """A connection pool whose ``connection()`` raises ``TemporaryError`` when Postgres is gone.

    psycopg_pool raises its own ``PoolTimeout`` (no connection within the pool's
    timeout) and psycopg ``OperationalError`` (a connection lost at commit)
    outside any ``store`` function; callers such as the Celery tasks retry only
    ``TemporaryError``, so a Postgres restart would otherwise fail a scan task.
    """

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        try:
            with super().connection(timeout) as conn:
                yield conn
        except (psycopg_pool.PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError) as e:
            raise errors.TemporaryError(
                f"Postgres connection of pool {self.name}: {type(e).__name__}: "
                + logs.redact(" ".join(str(e).split()))
                + "; is Postgres up? retried"
            ) from e


def pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    timeout: float = 15.0,
    password: str | None = None,
) -> psycopg_pool.ConnectionPool[Any]:
    """Open a connection pool for this process (one per process; close it on shutdown).

    Use ``with p.connection() as conn:``; the block commits on success. Raises
    ``TemporaryError`` (without the password) when Postgres cannot be reached
    within ``timeout`` seconds.
    """
    p: psycopg_pool.ConnectionPool[Any] = Pool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"connect_timeout": 10, **({"password": password} if password else {})},
        name="scanqueue",
        open=False,
    )
    try:
        p.open(wait=True, timeout=timeout)
    except psycopg_pool.PoolTimeout as e:
        p.close()
        raise errors.TemporaryError(
            f"cannot open a Postgres pool to {logs.redact(url)} within {timeout:g}s; "
            "check database.url and that Postgres is running"
        ) from e
    return p


def execute_alone(conn: Connection, query: str | bytes, params: Mapping[str, Any]) -> Any:
    """Run ``query`` as its own transaction, one round trip, and return its first row.

    Outside a transaction the statement runs in autocommit (its implicit
    transaction is the whole write; BEGIN and COMMIT would be two more round
    trips). Inside the caller's transaction it runs in a savepoint, as every
    write function does.
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        with conn.transaction():
            return conn.execute(query, params).fetchone()
    if conn.autocommit:
        return conn.execute(query, params).fetchone()
    conn.autocommit = True
    try:
        return conn.execute(query, params).fetchone()
    finally:
        if not conn.closed:  # a lost connection raises what lost it, not this
            conn.autocommit = False
