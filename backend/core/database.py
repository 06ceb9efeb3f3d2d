"""Engines and sessions. Nothing connects at import; the first call builds what it needs.

Callers own transactions: `with session_scope() as session:` commits on success and rolls
back on error. Repositories only query and add.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from backend.config import get_settings

_lock = threading.Lock()
_engines: dict[str, Engine] = {}


class DatabaseUnavailableError(RuntimeError):
    """The database cannot be reached or used; the message says which and why."""


def database_url() -> str:
    return get_settings().effective_database_url


def redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL for the life of the process."""
    url = url or database_url()
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _build_engine(url)
            _engines[url] = engine
        return engine


def _build_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        pool_timeout=10,  # every pooled connection stuck: fail in 10 s rather than 30
        connect_args=PG_CONNECT_ARGS,
    )
    from backend.core import db_clock, db_deadline  # psycopg: for PostgreSQL only

    db_deadline.install(engine)  # a limit for the API and the readiness probe, by context
    db_clock.install(engine)  # every host stamps times on the database's clock
    return engine


# A server gone without a word (a dead host, a lost route) is noticed in about 25 s instead
# of the kernel's two hours: keepalives on idle connections, tcp_user_timeout on unanswered
# writes. Neither helps when the server's kernel still answers for a paused process: that
# needs the per-caller limit of db_deadline.
PG_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,  # milliseconds
}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
    # The SQL policy compiler's regex on SQLite: Python's own re, so the meaning is the same.
    dbapi_connection.create_function("finops_regex_match", 3, _regex_match, deterministic=True)


def _regex_match(pattern: str, text: str | None, ignore_case: int) -> int | None:
    if text is None:
        return None
    return int(re.match(pattern, text, re.IGNORECASE if ignore_case else 0) is not None)


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def session_factory(url: str | None = None, *, autocommit: bool = False) -> sessionmaker[Session]:
    """Sessions on the URL's engine. `autocommit`: each statement is its own transaction,
    for readers that write nothing: no BEGIN and no ROLLBACK, two round trips fewer a
    request. At READ COMMITTED, PostgreSQL's level here, a transaction gives each statement
    its own snapshot anyway, so a reader sees nothing different."""
    engine = get_engine(url)
    if autocommit:
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(
    url: str | None = None, *, factory: Callable[[], Session] | None = None
) -> Iterator[Session]:
    """A transaction: commit when the block ends, roll back if it raises."""
    session = (factory or session_factory(url))()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def check_database(url: str | None = None) -> None:
    """Raise DatabaseUnavailableError naming the database and the cause, or return."""
    url = url or database_url()
    try:
        with get_engine(url).connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        cause = error_cause(exc)
        raise DatabaseUnavailableError(f"cannot use database {redacted(url)}: {cause}") from exc


def error_cause(exc: BaseException) -> str:
    """The driver's own first line for a database error (SQLAlchemy's wrapper adds the SQL
    and a link), or the error's type when it says nothing."""
    original = getattr(exc, "orig", None) or exc
    return (str(original).strip().splitlines() or [type(original).__name__])[0]


def get_db(url: str | None = None) -> Session | None:
    """A session on a database that answered, or None (with the reason on stderr).

    The runbook probes with `print('DB OK' if get_db() else 'DB FAIL')`. The caller closes
    the session.
    """
    try:
        check_database(url)
    except DatabaseUnavailableError as exc:
        print(f"database check failed: {exc}", file=sys.stderr)
        return None
    return session_factory(url)()
