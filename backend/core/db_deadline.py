"""How long a caller waits on PostgreSQL, per caller rather than per process.

A paused or half-dead server (SIGSTOP, a frozen VM, a lost network path) accepts TCP and
never answers: libpq then waits forever, keepalives and tcp_user_timeout included, since
the kernel keeps acknowledging. Only a client-side limit ends that wait. The API and the
readiness probe set one (`answer_within`); workers, the CLI and migrations do not, because
a policy evaluation over a large inventory or a migration may legitimately run long.

Within a limit, the server's statement_timeout (SET LOCAL, this transaction only) cancels a
slow statement cleanly first; the client gives up GRACE seconds later, closes the
connection (its protocol state is unknown, so it is never reused) and raises NoAnswerError,
an OperationalError: the API answers 503.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen
from sqlalchemy import Engine, event

RV = TypeVar("RV")
GRACE = 2.0  # seconds past the server's own statement_timeout before the client gives up

_limit: ContextVar[float | None] = ContextVar("finops_db_answer_limit", default=None)


@contextmanager
def answer_within(seconds: float | None) -> Iterator[None]:
    """Every PostgreSQL statement run in this context (threads started from it too, as
    Starlette's thread pool is) answers within `seconds`, or fails; None: no limit."""
    token = _limit.set(seconds if seconds and seconds > 0 else None)
    try:
        yield
    finally:
        _limit.reset(token)


def current_limit() -> float | None:
    return _limit.get()


class NoAnswerError(psycopg.OperationalError):
    """The server did not answer within the caller's limit; the connection is closed."""


class DeadlineConnection(psycopg.Connection[Any]):
    """psycopg's connection, waiting on the socket at most the context's limit + GRACE."""

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        limit = _limit.get()
        if timeout is not None or limit is None:
            return super().wait(gen, interval, timeout)
        try:
            return super().wait(gen, interval, limit + GRACE)
        except psycopg.errors._WaitTimeout:
            # Mid-protocol: a late answer would be read as the next statement's. Closed, so
            # SQLAlchemy sees a disconnect and drops it from the pool.
            self.pgconn.finish()
            raise NoAnswerError(f"no answer in {limit + GRACE:g} s") from None


_BAKED = "finops_statement_timeout_ms"  # the connection's own statement_timeout


def _milliseconds(limit: float | None) -> int:
    return int(limit * 1000) if limit is not None else 0  # 0: no timeout


def install(engine: Engine) -> None:
    """Connect with DeadlineConnection, and give the server the caller's limit.

    A connection made under a limit has it as its own statement_timeout (a connection
    option: no statement). A transaction under another limit, or none, sets its own with
    SET LOCAL: one more round trip, for the readiness probe's shorter limit, say, but not
    for every API request, which all share one limit. A connection used without
    transactions (the API's readers) has nothing to be LOCAL to: it takes the limit as its
    own with SET, which also makes it the connection's baked value.
    """

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        limit = _limit.get()
        if limit is not None:  # a reconnect within the limit too (libpq's least is 2 s)
            most = int(cparams.get("connect_timeout") or 5)
            timeout = _milliseconds(limit)
            cparams = {
                **cparams,
                "connect_timeout": max(2, min(most, math.ceil(limit + GRACE))),
                "options": f"{cparams.get('options', '')} -c statement_timeout={timeout}".strip(),
            }
        record.info[_BAKED] = _milliseconds(limit)
        return DeadlineConnection.connect(*cargs, **cparams)

    @event.listens_for(engine, "begin")
    def _statement_timeout(connection: Any) -> None:
        wanted = _milliseconds(_limit.get())
        record = connection.connection
        if record.info.get(_BAKED, 0) != wanted:
            dbapi = record.dbapi_connection
            # The raw cursor: the transaction SQLAlchemy is beginning is not usable yet.
            with dbapi.cursor() as cursor:
                if dbapi.autocommit:  # no transaction to be LOCAL to: the connection's own
                    cursor.execute(f"SET statement_timeout = {wanted}")
                    record.info[_BAKED] = wanted
                else:
                    cursor.execute(f"SET LOCAL statement_timeout = {wanted}")
