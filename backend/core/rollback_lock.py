"""One rollback of an action at a time, across processes and hosts, for the length of the
undo (minutes, for a restore from a snapshot).

Not a row lock: a transaction held open across AWS calls would hold the action row (and a
connection) in every other writer's way. PostgreSQL: a session-level advisory lock on a
connection of its own. SQLite (one host): an exclusive lock on a file beside the database.
Both are released by the operating system or the server if the process dies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from backend.core.database import database_url, get_engine
from backend.core.file_lock import file_lock

# The advisory lock's first key: this lock's namespace ("FRBK"), the action id the second.
NAMESPACE = 0x4652424B


@contextmanager
def rollback_lock(action_id: int) -> Iterator[bool]:
    """Yields True while this caller holds the action's rollback lock, False when another
    rollback of it is under way (nothing is waited for)."""
    url = database_url()
    engine = get_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            key = {"ns": NAMESPACE, "id": action_id}
            held = bool(
                connection.execute(text("SELECT pg_try_advisory_lock(:ns, :id)"), key).scalar()
            )
            try:
                yield held
            finally:
                if held:
                    connection.execute(text("SELECT pg_advisory_unlock(:ns, :id)"), key)
        return
    path = make_url(url).database
    if engine.dialect.name != "sqlite" or not path or path == ":memory:":
        yield True  # one process, one connection: nothing to race
        return
    locks = Path(path).parent / f".{Path(path).name}.rollback-locks"
    locks.mkdir(exist_ok=True)
    with file_lock(locks / str(action_id)) as held:
        yield held
