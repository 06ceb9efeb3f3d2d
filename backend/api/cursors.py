"""Keyset cursors: where a page ended, as an opaque URL-safe token.

A cursor is the URL-safe base64 (unpadded) of the JSON list `[sort, value, id, total,
exact]`: the sort it was made for (`-monthly_cost`), the last row's value of that field
(null when empty; a datetime as ISO 8601 with its offset), the row's primary key, and the
list's total as the first page counted it (so the pages after it are not counted again: a
count is up to 10,000 index entries a page). `[sort, value, id]` is read too: the pages
after it are counted. It is not signed: it holds
nothing secret, and a cursor edited by hand only moves where the next page starts, which a
caller can do with `offset` anyway. Everything in it is checked before it reaches SQL, so a
cursor that does not decode, was made for another sort, or holds a value the sort field
cannot have is a 422 problem (`invalid-cursor`) that says which, never a database error.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
from dataclasses import dataclass, field
from typing import Any

from backend.api.problems import Problem

MAX_CURSOR = 512  # characters: a cursor holds one value and an id, far less than this
MAX_TEXT = 1024  # characters of a text value
INT64 = range(-(2**63), 2**63)  # PostgreSQL's bigint, and any integer on SQLite
INT32 = range(-(2**31), 2**31)  # PostgreSQL's integer


@dataclass(frozen=True)
class Position:
    """The last row of a page: its sort value (None when empty) and its primary key."""

    value: Any
    key: int
    # (total, exact) as the list's first page counted it, when the cursor carries it.
    counted: tuple[int, bool] | None = field(default=None, compare=False)


def invalid_cursor(why: str) -> Problem:
    return Problem(422, f"invalid cursor: {why}", kind="invalid-cursor", title="Invalid request")


def encode_cursor(sort: str, value: Any, key: int, counted: tuple[int, bool] | None = None) -> str:
    if isinstance(value, dt.datetime):
        value = value.isoformat()
    body = [sort, value, key, *(counted or ())]
    raw = json.dumps(body, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(
    cursor: str, sort: str, kind: type, nullable: bool, ints: range = INT64
) -> Position:
    """The position in `cursor`, checked against the request's `sort` and the sort field's
    Python type (`kind`: int, float, str or datetime) and nullability; the id, and an
    integer value, must be in `ints` (what the columns hold on this database)."""
    if not cursor or len(cursor) > MAX_CURSOR:
        raise invalid_cursor(f"expected 1 to {MAX_CURSOR} characters, the next_cursor of a page")
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        body = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError):  # UnicodeDecodeError and JSONDecodeError are both
        raise invalid_cursor("not a cursor this API made (not URL-safe base64 JSON)") from None
    if not (isinstance(body, list) and len(body) in (3, 5) and isinstance(body[0], str)):
        raise invalid_cursor(
            "not a cursor this API made (expected [sort, value, id, total, exact])"
        )
    made_for, value, key = body[:3]
    if made_for != sort:
        raise invalid_cursor(
            f"it continues a list sorted by {made_for!r}, not {sort!r}: "
            "send the same sort, or start again without a cursor"
        )
    if not _is_int(key, ints):
        raise invalid_cursor("its id is not an integer in the database's range")
    return Position(_value(value, kind, nullable, ints), key, _counted(body[3:]))


def _counted(rest: list[Any]) -> tuple[int, bool] | None:
    if not rest:
        return None
    total, exact = rest
    if not (_is_int(total, INT64) and total >= 0 and isinstance(exact, bool)):
        raise invalid_cursor("its total is not a count and a flag")
    return total, exact


def _value(value: Any, kind: type, nullable: bool, ints: range) -> Any:
    if value is None:
        if nullable:
            return None
        raise invalid_cursor("its sort value is empty, and this field is never empty")
    if kind is int:
        if _is_int(value, ints):
            return value
        raise invalid_cursor("its sort value is not an integer in the database's range")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if not math.isnan(number):
                return number
        raise invalid_cursor("its sort value is not a number")
    if kind is dt.datetime:
        return _datetime(value)
    if isinstance(value, str) and len(value) <= MAX_TEXT and "\x00" not in value:
        return value
    raise invalid_cursor(f"its sort value is not a text of at most {MAX_TEXT} characters")


def _datetime(value: Any) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.astimezone(dt.UTC)  # what the database is given
    except (ValueError, OverflowError):  # OverflowError: past year 9999 once in UTC
        pass
    raise invalid_cursor("its sort value is not an ISO 8601 time with an offset")


def _is_int(value: Any, ints: range) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in ints
