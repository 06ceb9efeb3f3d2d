"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

# JSONB on PostgreSQL (indexable, operators), plain JSON text on SQLite.
JsonDoc = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes everywhere; SQLite drops the zone, so we put it back."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: use an aware UTC datetime")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


class _ClockOffset:
    """What this host's clock is behind the database's (see db_clock.py): zero until a
    process measures it, and always zero on SQLite (one host, one clock)."""

    delta = dt.timedelta(0)


CLOCK_OFFSET = _ClockOffset()


def host_now() -> dt.datetime:
    """This host's own clock, uncorrected: for what is judged against AWS's time (metric
    windows), and to measure the offset."""
    return dt.datetime.now(dt.UTC)


def utcnow() -> dt.datetime:
    """Now, on the database's clock: claims, heartbeats, approvals and limits are stamped by
    processes on several hosts and compared with each other's stamps."""
    return host_now() + CLOCK_OFFSET.delta
