"""What migrations/env.py runs on: a connection of the migration's own, its locks and errors.

The connection is never one of the process's pooled ones, so that its session settings
(SQLite's transaction mode and foreign keys, PostgreSQL's lock_timeout) end with it.
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from backend.core.database import redacted

log = structlog.get_logger(__name__)


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
