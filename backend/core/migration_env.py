"""What migrations/env.py runs on: a connection of the migration's own, its locks and errors.

The connection is never one of the process's pooled ones, so that its session settings
(SQLite's transaction mode and foreign keys, PostgreSQL's lock_timeout) end with it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import structlog
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, column, create_engine, event, inspect, text
from sqlalchemy import table as sa_table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from backend.config import SettingsError
from backend.core.database import redacted
from backend.core.types import utcnow

log = structlog.get_logger(__name__)

LOCK_TIMEOUT_VARIABLE = "FINOPS_MIGRATION_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_SECONDS = 10.0
# How long a migration waits for another one on the same database to finish.
MIGRATION_WAIT_SECONDS = 600.0
# config.attributes key: a dict that a dry run fills with "tables" (those left after it).
DRY_RUN = "finops_dry_run"
# Any constant: the PostgreSQL advisory lock that one migration at a time holds.
_ADVISORY_LOCK_KEY = 0x46494E4F5053  # "FINOPS"
_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's lock_timeout


def lock_timeout_seconds() -> float:
    raw = os.environ.get(LOCK_TIMEOUT_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 86_400:
        raise SettingsError(
            f"{LOCK_TIMEOUT_VARIABLE}={raw!r}: give the seconds a migration's statement may "
            "wait for a table lock, more than 0 (e.g. 10)"
        )
    return value


def migration_engine(url: str) -> Engine:
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    engine = create_engine(
        url, poolclass=NullPool, connect_args={"timeout": 30, "check_same_thread": False}
    )
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's legacy transaction mode sends no BEGIN before DDL, so batch mode's CREATE
    # TABLE would commit on its own: off, and the begin event below sends the BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # as the application's connections have it
    # Batch mode alters a table by copying it and dropping the old one, which SQLite
    # refuses while rows elsewhere reference it: off here, checked before the commit.
    cursor.execute("PRAGMA foreign_keys=OFF")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # IMMEDIATE: the write lock from the start, so that a second migrator waits here,
    # before it has read the revision, rather than failing half-way through its own run.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def drop_stale_batch_tables(connection: Connection) -> None:
    """Batch mode's scratch copies left by a run interrupted before this transactional one
    (they hold no data of their own): each would stop its migration from ever running."""
    names = [
        row[0]
        for row in connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name LIKE '\\_alembic\\_tmp\\_%' ESCAPE '\\'"
        )
    ]
    for name in names:
        connection.exec_driver_sql(f'DROP TABLE "{name}"')
    if names:
        log.warning(
            "dropped scratch tables an interrupted migration left behind",
            tables=names,
            database=redacted(str(connection.engine.url)),
        )


def check_references(connection: Connection) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"migration left rows with broken references: {broken[:20]}")


def prepare_postgres(connection: Connection) -> float:
    """Waits for any other migration of this database to end, then bounds every lock wait
    of this one's statements. Returns the bound, in seconds. Leaves no transaction open."""
    deadline = time.monotonic() + MIGRATION_WAIT_SECONDS
    lock = text("SELECT pg_try_advisory_lock(:key)")
    while not connection.execute(lock, {"key": _ADVISORY_LOCK_KEY}).scalar():
        connection.rollback()
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"another migration of this database has run for over "
                f"{MIGRATION_WAIT_SECONDS:.0f} s; let it finish, then run this one again"
            )
        time.sleep(0.5)
    seconds = lock_timeout_seconds()
    setting = text("SELECT set_config('lock_timeout', :value, false)")
    connection.execute(setting, {"value": f"{max(1, round(seconds * 1000))}ms"})
    connection.commit()  # the advisory lock and the setting are the session's: they stay
    return seconds


def lock_wait_error(exc: DBAPIError, seconds: float) -> RuntimeError | None:
    """The one line to say for a statement that gave up waiting for a lock, or None."""
    if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
        return None
    statement = " ".join((exc.statement or "?").split())[:120]
    return RuntimeError(
        f"migration stopped: waited {seconds:g} s ({LOCK_TIMEOUT_VARIABLE}) for a lock that "
        f"another transaction holds, for `{statement}`; let that transaction end (see "
        "pg_stat_activity), then run the migration again"
    )


# -- the oldest code that may run on the schema (see migrations/versions/0009) ---------------
COMPATIBILITY_TABLE = "schema_compatibility"


def oldest_code(script: ScriptDirectory, revision: str) -> str:
    """The oldest code revision that runs correctly on a schema at `revision`: the newest
    migration up to it that does not declare `older_code_compatible = True`."""
    for step in script.iterate_revisions(revision, "base"):
        if getattr(step.module, "older_code_compatible", False) is not True:
            return step.revision
    return revision


def oldest_code_recorder(script: ScriptDirectory) -> Callable[..., None]:
    """Alembic's on_version_apply: after each revision, in its transaction, record the oldest
    code that may run on the schema it left (once the table exists)."""

    def record(*, ctx: MigrationContext, heads: set[str], **_: Any) -> None:
        connection = ctx.connection
        if connection is None or len(heads) != 1:
            return
        if not inspect(connection).has_table(COMPATIBILITY_TABLE):
            return  # below 0009, or downgraded past it
        (head,) = heads
        table = sa_table(
            COMPATIBILITY_TABLE, column("revision"), column("oldest_code"), column("recorded_at")
        )
        connection.execute(table.delete())
        connection.execute(
            table.insert().values(
                revision=head, oldest_code=oldest_code(script, head), recorded_at=utcnow()
            )
        )

    return record
