"""Run Alembic from code: `finops db upgrade`, and the embedded mode's automatic upgrade."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from backend.core.database import check_database, database_url, get_engine


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
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


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
