"""Run Alembic from code: `finops db upgrade`, and the embedded mode's automatic upgrade.

One migration at a time per database: a file lock beside an embedded SQLite file (and
SQLite's BEGIN IMMEDIATE), a PostgreSQL advisory lock (migrations/env.py).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url

from backend.core.database import check_database, database_url, get_engine, redacted
from backend.core.file_lock import waited_file_lock
from backend.core.migration_env import COMPATIBILITY_TABLE, DRY_RUN, MIGRATION_WAIT_SECONDS

# Never dropped while it has rows, --force or not: the hash-chained record of every action.
AUDIT_TABLE = "audit_events"
log = structlog.get_logger(__name__)


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


class SchemaOutOfDateError(RuntimeError):
    """The database's schema is not the one this code needs; the message says what to do."""


class MigrationFailedError(SchemaOutOfDateError):
    """A migration stopped or was refused: one line, with the revision the database is at."""


def upgrade(url: str | None = None, revision: str = "head") -> None:
    url = url or database_url()
    current = current_revision(url)
    if revision == "head" and _runs_on_newer_schema(url, current):
        return  # a newer release migrated it, and says this one may run on it: nothing to do
    _refuse_unknown(current)
    if revision == "head" and current == head_revision() and not _stale_batch_tables(url):
        return  # every command of the embedded mode comes here: no lock when nothing to do
    with _one_migration_at_a_time(url):
        _run(url, lambda cfg: command.upgrade(cfg, revision))


def downgrade(url: str | None = None, revision: str = "base", *, force: bool = False) -> None:
    """Refuses when the target would drop a table that has rows (unless `force`), and always
    when that table is audit_events."""
    url = url or database_url()
    _known_revision(url)
    with _one_migration_at_a_time(url):
        dropped = tables_dropped(url, revision)
        refused = dropped if not force else {t: n for t, n in dropped.items() if t == AUDIT_TABLE}
        if refused:
            raise MigrationFailedError(_refusal(revision, dropped, refused))
        _run(url, lambda cfg: command.downgrade(cfg, revision))


def tables_dropped(url: str, revision: str) -> dict[str, int]:
    """The tables with rows that a downgrade to `revision` would drop, and their row counts:
    the downgrade is run in a transaction that is rolled back (skipped if no table has rows)."""
    with get_engine(url).connect() as connection:
        # the migrations' own bookkeeping is not data, nor are the policies' numbers: each
        # opportunity's id keeps its own, and 0011 numbers the names again on the way up
        bookkeeping = ("alembic_version", COMPATIBILITY_TABLE, "policy_numbers")
        names = [n for n in inspect(connection).get_table_names() if n not in bookkeeping]
        filled = [n for n in names if _has_rows(connection, n)]
    if not filled:
        return {}
    left: dict[str, set[str]] = {}
    _run(url, lambda cfg: command.downgrade(cfg, revision), {DRY_RUN: left})
    gone = [n for n in filled if n not in left.get("tables", set(names))]
    with get_engine(url).connect() as connection:
        return {
            n: connection.execute(text(f'SELECT count(*) FROM "{n}"')).scalar_one() for n in gone
        }


def _has_rows(connection: Connection, table: str) -> bool:
    return connection.execute(text(f'SELECT 1 FROM "{table}" LIMIT 1')).first() is not None


def _refusal(revision: str, dropped: dict[str, int], refused: dict[str, int]) -> str:
    listed = ", ".join(f"{t} ({n} rows)" for t, n in sorted(dropped.items()))
    if AUDIT_TABLE in refused:
        return (
            f"refusing to downgrade to {revision}: it would drop {listed}; {AUDIT_TABLE} is the "
            "hash-chained audit trail and is never dropped while it has rows, --force or not"
        )
    return (
        f"refusing to downgrade to {revision}: it would drop {listed}; back them up, then "
        "pass --force to drop them"
    )


def _run(
    url: str, migrate: Callable[[Config], None], attributes: dict[str, object] | None = None
) -> None:
    cfg = alembic_config(url)
    cfg.attributes.update(attributes or {})
    try:
        migrate(cfg)
    except MigrationFailedError:
        raise
    except CommandError as exc:
        raise MigrationFailedError(f"{_first_line(exc)}{_where(url)}") from exc
    except RuntimeError as exc:
        if type(exc) is not RuntimeError:  # NotImplementedError and the like: bugs
            raise
        raise MigrationFailedError(f"{_first_line(exc)}{_where(url)}") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _where(url: str) -> str:
    try:
        return f" (the database is at revision {current_revision(url) or 'none'})"
    except Exception:  # noqa: BLE001 - the failure being reported matters more
        return ""


@contextmanager
def _one_migration_at_a_time(url: str) -> Iterator[None]:
    """A file lock beside an SQLite file; PostgreSQL's advisory lock is taken in env.py."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        yield
        return
    path = Path(f"{parsed.database}.migration-lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with waited_file_lock(path, MIGRATION_WAIT_SECONDS) as held:
        if not held:
            raise MigrationFailedError(
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
    return _scripts(str(_project_root())).get_current_head()


@functools.lru_cache(maxsize=8)
def _scripts(root: str) -> ScriptDirectory:
    # Read once per process: every embedded command asks, and reading them takes ~10 ms.
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def _is_known(revision: str) -> bool:
    try:
        return _scripts(str(_project_root())).get_revision(revision) is not None
    except CommandError:
        return False


def _known_revision(url: str) -> str | None:
    """The database's revision, or SchemaOutOfDateError when this code does not know it:
    the database was migrated by newer code, and only that code can move it."""
    current = current_revision(url)
    _refuse_unknown(current)
    return current


def _refuse_unknown(current: str | None) -> None:
    if current is not None and not _is_known(current):
        raise SchemaOutOfDateError(schema_advice(current, head_revision()))


def schema_advice(current: str | None, head: str | None) -> str:
    """What to do about a database at `current` when the code needs `head`."""
    if current is not None and not _is_known(current):
        return (
            f"database schema is at revision {current}, newer than this code's {head}, and "
            "its migrations do not allow code this old to run on it: deploy the image that "
            f"has it (to go back, run `finops db downgrade {head}` with that newer image)"
        )
    return (
        f"database schema is at revision {current or 'none'}, the code needs {head}: "
        "run `finops db upgrade`"
    )


def ensure_schema(url: str | None = None) -> None:
    """Embedded SQLite migrates itself; a server database must be migrated on purpose."""
    url = url or database_url()
    if url.startswith("sqlite"):
        upgrade(url)
        return
    check_database(url)  # down or refused: said plainly, before alembic's own error
    current, head = current_revision(url), head_revision()
    if current != head and not _runs_on_newer_schema(url, current):
        raise SchemaOutOfDateError(schema_advice(current, head))


def oldest_code_allowed(url: str, revision: str) -> str | None:
    """The oldest code revision that the migration to `revision` said may run on the schema,
    or None when that is not recorded (a schema before 0009, or a record of another revision:
    the version changed by other means than a migration)."""
    with get_engine(url).connect() as connection:
        if not inspect(connection).has_table(COMPATIBILITY_TABLE):
            return None
        query = text(f"SELECT oldest_code FROM {COMPATIBILITY_TABLE} WHERE revision = :revision")
        found = connection.execute(query, {"revision": revision}).scalar()
        return str(found) if found is not None else None


def _runs_on_newer_schema(url: str, current: str | None) -> bool:
    """The database is at `current`, a revision this code does not know (a newer release
    migrated it), and that release recorded a revision this code has as the oldest that may
    run on it: the rollback of an image, or an old pod during a rolling update, starts and
    says so."""
    if current is None or _is_known(current):
        return False
    oldest = oldest_code_allowed(url, current)
    if oldest is None or not _is_known(oldest):
        return False
    log.warning(
        "database schema is newer than this release, and compatible with it",
        database_revision=current,
        this_release=head_revision(),
        oldest_release_allowed=oldest,
    )
    return True


def ensure_embedded_schema(url: str | None = None) -> None:
    """The embedded SQLite migrates itself wherever the runbook enters; a server does not."""
    url = url or database_url()
    if url.startswith("sqlite"):
        upgrade(url)
