"""Every process tells the time by PostgreSQL's clock.

Workers, the scheduler, the API and the CLI run on several hosts, and each stamps times that
the others compare: a claim's time against the hourly limit, a heartbeat against staleness,
an approval's expiry and an action's not-before against the claim. A host whose clock is an
hour slow would stamp its claims outside the last hour (the limit would not count them), its
heartbeats as stale (the reconciler would settle the actions it is executing), and find
approved actions not yet due. So each process measures how far its own clock is from the
database's and `types.utcnow()` adds that offset: one clock for every stamp.

The offset is measured when a pooled connection is checked out and the last measure is older
than REFRESH (a query a minute per process at most), on that connection, and kept when the
answer comes too slowly to be precise. On SQLite there is one host and the offset stays zero.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import structlog
from sqlalchemy import Engine, event

from backend.core.types import CLOCK_OFFSET, host_now

log = structlog.get_logger(__name__)

REFRESH_SECONDS = 60.0
# A measure is the round trip's midpoint: one slower than this says too little.
MAX_ROUND_TRIP = dt.timedelta(milliseconds=500)
# Less than this is the measure's own noise, and no stamp's meaning depends on it: taken as
# zero, so that times do not move by a fraction of a millisecond with each measure.
TOLERANCE = dt.timedelta(milliseconds=250)
# An offset this large is said in the log (once per change of a second or more).
WORTH_SAYING = dt.timedelta(seconds=1)


class _State:
    lock = threading.Lock()
    measured_at = float("-inf")  # time.monotonic() of the last measure
    said = dt.timedelta(0)  # the offset last written to the log


def install(engine: Engine) -> None:
    """Measure the offset on this engine's connections as they are checked out."""
    event.listen(engine, "checkout", _on_checkout)


def measure(dbapi_connection: Any) -> dt.timedelta | None:
    """The database's clock minus this host's, or None if the answer came too slowly."""
    cursor = dbapi_connection.cursor()
    try:
        before = host_now()
        cursor.execute("SELECT clock_timestamp()")
        (database_now,) = cursor.fetchone()
        after = host_now()
    finally:
        cursor.close()
        dbapi_connection.rollback()  # the connection goes to its user as it came
    if after - before > MAX_ROUND_TRIP or not isinstance(database_now, dt.datetime):
        return None
    return database_now - (before + (after - before) / 2)


def adopt(offset: dt.timedelta) -> None:
    """Take this offset for utcnow(); say so when the host's clock is noticeably off."""
    CLOCK_OFFSET.delta = offset if abs(offset) >= TOLERANCE else dt.timedelta(0)
    if abs(offset) >= WORTH_SAYING and abs(offset - _State.said) >= WORTH_SAYING:
        log.warning(
            "this host's clock is off: times are stamped on the database's clock",
            host_behind_by_seconds=round(offset.total_seconds(), 3),
        )
        _State.said = offset
    elif abs(offset) < WORTH_SAYING and abs(_State.said) >= WORTH_SAYING:
        log.info("this host's clock agrees with the database's again")
        _State.said = dt.timedelta(0)


def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    with _State.lock:
        if time.monotonic() - _State.measured_at < REFRESH_SECONDS:
            return
        _State.measured_at = time.monotonic()
    try:
        offset = measure(dbapi_connection)
    except Exception as exc:  # noqa: BLE001 - the last offset stays; the caller's query will say
        log.debug("clock offset not measured", error=str(exc))
        return
    if offset is not None:
        adopt(offset)


def forget() -> None:
    """Back to this host's clock, measured again at the next checkout (tests, forks)."""
    with _State.lock:
        _State.measured_at = float("-inf")
        _State.said = dt.timedelta(0)
    CLOCK_OFFSET.delta = dt.timedelta(0)


def keep_measured(engine: Engine, stop: threading.Event) -> threading.Thread:
    """For a process that may not use the database for long (the scheduler): check out a
    connection every REFRESH seconds so that the offset is measured."""

    def run() -> None:
        while not stop.is_set():
            try:
                with engine.connect():
                    pass
            except Exception as exc:  # noqa: BLE001 - the last offset stays
                log.debug("clock offset not measured", error=str(exc))
            stop.wait(REFRESH_SECONDS)

    thread = threading.Thread(target=run, name="finops-db-clock", daemon=True)
    thread.start()
    return thread
