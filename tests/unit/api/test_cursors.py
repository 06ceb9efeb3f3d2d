"""Keyset cursors: what a page's last row becomes, and what a cursor may hold."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from backend.api.cursors import MAX_CURSOR, Position, decode_cursor, encode_cursor
from backend.api.problems import Problem

SEEN = dt.datetime(2026, 11, 29, 7, 12, 53, 724273, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("value", "kind", "nullable"),
    [(12.5, float, True), (None, float, True), (7, int, False), ("r-1", str, False)],
)
def test_a_cursor_gives_back_the_position_it_was_made_from(
    value: Any, kind: type, nullable: bool
) -> None:
    cursor = encode_cursor("-field", value, 42)
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert decode_cursor(cursor, "-field", kind, nullable) == Position(value, 42)


def test_a_time_keeps_its_microseconds_and_comes_back_in_utc() -> None:
    cursor = encode_cursor("last_seen", SEEN, 1)
    assert decode_cursor(cursor, "last_seen", dt.datetime, False).value == SEEN
    paris = SEEN.astimezone(dt.timezone(dt.timedelta(hours=1)))
    back = decode_cursor(encode_cursor("t", paris, 1), "t", dt.datetime, False).value
    assert back == SEEN and back.tzinfo == dt.UTC


def test_an_integer_stands_for_a_float_but_nothing_else_passes_for_a_number() -> None:
    assert decode_cursor(encode_cursor("c", 3, 1), "c", float, True).value == 3.0
    for bad in ("3", True, [3], {"v": 3}):
        with pytest.raises(Problem) as refused:
            decode_cursor(encode_cursor("c", bad, 1), "c", float, True)
        assert refused.value.status == 422 and refused.value.kind == "invalid-cursor"


def test_a_cursor_too_long_or_past_year_9999_in_utc_is_refused() -> None:
    with pytest.raises(Problem, match="characters"):
        decode_cursor("a" * (MAX_CURSOR + 1), "id", int, False)
    with pytest.raises(Problem, match="ISO 8601"):
        decode_cursor(encode_cursor("t", "9999-12-31T23:00:00-05:00", 1), "t", dt.datetime, False)


def test_the_first_pages_count_rides_along_and_a_cursor_without_one_still_reads() -> None:
    carried = decode_cursor(encode_cursor("id", 9, 9, (10_000, False)), "id", int, False)
    assert (carried.key, carried.counted) == (9, (10_000, False))
    assert decode_cursor(encode_cursor("id", 9, 9), "id", int, False).counted is None


@pytest.mark.parametrize("counted", [(-1, True), (3, "yes"), (True, True), (2**63, False)])
def test_a_carried_count_that_is_not_a_count_and_a_flag_is_refused(counted: Any) -> None:
    with pytest.raises(Problem, match="total") as refused:
        decode_cursor(encode_cursor("id", 9, 9, counted), "id", int, False)
    assert refused.value.status == 422
