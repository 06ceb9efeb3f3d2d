"""Run Alembic from code: `finops db upgrade`, and the embedded mode's automatic upgrade.

One migration at a time per database: a file lock beside an embedded SQLite file (and
SQLite's BEGIN IMMEDIATE), a PostgreSQL advisory lock (migrations/env.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from backend.core.database import check_database, database_url, get_engine, redacted
from backend.core.file_lock import waited_file_lock
from backend.core.migration_env import MIGRATION_WAIT_SECONDS


def _project_root() -> Path:
    override = os.environ.get("FINOPS_MIGRATIONS_DIR")
    if override:
        return Path(override).resolve().parent
    return Path(__file__).resolve().parents[2]


def alembic_config(url: str | None = None) -> Config:
    root = _project_root()
    cfg = Config(str(root / "alembic.ini"))
    cfg.set_main_option("script_location", str(root / "migrations"))
    cfg.set_main_option("sqlalchemy.url", (url or database_url()).replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    url = url or database_url()
    current = current_revision(url)
    if revision == "head" and current == head_revision() and not _stale_batch_tables(url):
        return  # every command of the embedded mode comes here: no lock when nothing to do
    with _one_migration_at_a_time(url):
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    url = url or database_url()
    with _one_migration_at_a_time(url):
        command.downgrade(alembic_config(url), revision)


@contextmanager
def _one_migration_at_a_time(url: str) -> Iterator[None]:
    """A file lock beside an SQLite file, so that a second process waits for the first and
    then finds nothing to do."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        yield
        return
    path = Path(f"{parsed.database}.migration-lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with waited_file_lock(path, MIGRATION_WAIT_SECONDS) as held:
        if not held:
            raise RuntimeError(
                f"another process has been migrating {redacted(url)} for over "
                f"{MIGRATION_WAIT_SECONDS:.0f} s (it holds {path}); let it finish, then retry"
            )
        yield


def _stale_batch_tables(url: str) -> bool:
    if make_url(url).get_backend_name() != "sqlite":
        return False
    with get_engine(url).connect() as connection:
        return any(n.startswith("_alembic_tmp_") for n in inspect(connection).get_table_names())


def current_revision(url: str | None = None) -> str | None:
    with get_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


class SchemaOutOfDateError(RuntimeError):
    pass


def ensure_schema(url: str | None = None) -> None:
    """Embedded SQLite migrates itself; a server database must be migrated on purpose."""
    url = url or database_url()
    if url.startswith("sqlite"):
        upgrade(url)
        return
    check_database(url)  # down or refused: said plainly, before alembic's own error
    current, head = current_revision(url), head_revision()
    if current != head:
        raise SchemaOutOfDateError(
            f"database schema is at revision {current or 'none'}, the code needs {head}: "
            "run `finops db upgrade`"
        )


def ensure_embedded_schema(url: str | None = None) -> None:
    """The embedded SQLite migrates itself wherever the runbook enters; a server does not."""
    url = url or database_url()
    if url.startswith("sqlite"):
        upgrade(url)
