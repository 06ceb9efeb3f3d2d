"""The pure parts of the audit chain: hashing, checking, sanitising, time windows."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from backend.core.audit_chain import (
    GENESIS_HASH,
    Anchor,
    AuditEvent,
    EventType,
    HeadAnchor,
    clean_text,
    event_hash,
    event_line,
    parse_time_spec,
    sanitize_details,
    verify_events,
)

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def chain(count: int) -> list[AuditEvent]:
    events: list[AuditEvent] = []
    prev = GENESIS_HASH
    for i in range(1, count + 1):
        fields: dict[str, Any] = {
            "id": i,
            "occurred_at": T0 + dt.timedelta(seconds=i),
            "actor": "engine",
            "event_type": "execution",
            "subject_type": "action",
            "subject_id": str(i),
            "outcome": "ok",
            "details": {"n": i},
            "prev_hash": prev,
        }
        prev = event_hash(**fields)
        events.append(AuditEvent(**fields, hash=prev))
    return events


def test_hash_is_stable_and_covers_every_field() -> None:
    event = chain(1)[0]
    assert event.expected_hash() == event.hash
    assert len(event.hash) == 64
    changes: list[tuple[str, Any]] = [
        ("id", 2),
        ("occurred_at", T0),
        ("actor", "x"),
        ("event_type", "scan"),
        ("subject_type", "x"),
        ("subject_id", "x"),
        ("outcome", "failed"),
        ("details", {"n": 2}),
        ("prev_hash", "1" * 64),
    ]
    for name, value in changes:
        assert dataclasses.replace(event, **{name: value}).expected_hash() != event.hash, name


def test_hash_ignores_key_order_and_timezone_spelling() -> None:
    event = chain(1)[0]
    other = dataclasses.replace(
        event,
        details=dict(reversed(list({"a": 1, "b": 2}.items()))),
        occurred_at=event.occurred_at.astimezone(dt.timezone(dt.timedelta(hours=2))),
    )
    assert (
        other.expected_hash()
        == dataclasses.replace(event, details={"a": 1, "b": 2}).expected_hash()
    )


def test_intact_chain_verifies() -> None:
    report = verify_events(chain(5))
    assert (report.ok, report.checked, report.head_id) == (True, 5, 5)
    assert verify_events([]).ok


def test_edit_delete_reorder_are_named() -> None:
    events = chain(6)
    edited = [*events[:3], dataclasses.replace(events[3], outcome="failed"), *events[4:]]
    report = verify_events(edited)
    assert (report.first_broken_id, report.reason) == (4, "hash mismatch (row edited)")

    report = verify_events(events[:2] + events[3:])
    assert report.first_broken_id == 4
    assert report.reason == "id gap after 2 (row deleted): event 3 missing"

    report = verify_events(events[2:])
    assert report.reason == "id gap after 0 (row deleted): events 1..2 missing"

    swapped = [
        *events[:2],
        dataclasses.replace(events[3], id=3),
        dataclasses.replace(events[2], id=4),
        *events[4:],
    ]
    report = verify_events(swapped)
    assert report.first_broken_id == 3
    assert report.reason == "prev_hash does not match previous event (row deleted or reordered)"


def test_anchor_exposes_a_deleted_tail_and_a_rewritten_log() -> None:
    events = chain(5)
    anchor = Anchor(5, events[4].hash)
    assert verify_events(events, anchor=anchor).ok
    report = verify_events(events[:4], anchor=anchor)
    assert (report.ok, report.first_broken_id) == (False, 5)
    assert report.reason is not None and report.reason.startswith("id gap after 4 (row deleted)")
    report = verify_events(events, anchor=Anchor(3, "f" * 64))
    assert (report.first_broken_id, report.reason) == (
        3,
        "hash differs from the anchored head (log rewritten)",
    )


def test_window_trusts_only_its_first_link() -> None:
    events = chain(10)
    assert verify_events(events[6:], from_start=False).ok
    assert not verify_events(events[6:]).ok


def test_sanitized_details_survive_json_round_trip() -> None:
    raw = {
        "big": 1e100,
        "neg0": -0.0,
        "nan": float("nan"),
        "when": T0,
        "set": {3, 1},
        "tuple": (1, "a"),
        "nul": "a\x00b",
        1: "int key",
        "obj": Path("/x"),
    }
    clean = sanitize_details(raw)
    assert json.loads(json.dumps(clean)) == clean
    assert clean["big"] == int(1e100) and clean["nan"] == "nan" and clean["set"] == [1, 3]
    assert clean["when"] == "2026-01-01T12:00:00.000000+00:00" and clean["1"] == "int key"
    assert "\x00" not in clean["nul"]


def test_clean_text_fits_the_column() -> None:
    assert clean_text("x" * 600, "subject_id").endswith("…")
    assert len(clean_text("x" * 600, "subject_id")) == 512
    assert clean_text(42, "subject_id") == "42"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30m", T0 - dt.timedelta(minutes=30)),
        ("24h", T0 - dt.timedelta(hours=24)),
        ("7d", T0 - dt.timedelta(days=7)),
        ("2026-01-01T00:00:00Z", dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
        ("2026-01-01T02:00:00+02:00", dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
        ("2026-01-01", dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
    ],
)
def test_parse_time_spec(value: str, expected: dt.datetime) -> None:
    assert parse_time_spec(value, now=T0) == expected


@pytest.mark.parametrize("value", ["yesterday", "24", "h", "-1h", ""])
def test_parse_time_spec_refuses_nonsense(value: str) -> None:
    with pytest.raises(ValueError, match="expected an ISO time"):
        parse_time_spec(value, now=T0)


def test_event_line_is_readable() -> None:
    line = event_line(chain(1)[0], with_id=True)
    assert line.startswith("#1 ")
    assert "2026-01-01 12:00:01Z" in line and "action:1" in line and "n=1" in line


def test_event_types_are_the_documented_set() -> None:
    assert len(EventType) == 15
    assert EventType("emergency_stop") is EventType.EMERGENCY_STOP


def test_head_anchor_moves_only_forward(tmp_path: Path) -> None:
    store = HeadAnchor(tmp_path / "a" / "anchor.json")
    assert store.get("db") is None
    store.advance("db", Anchor(5, "h5"))
    store.advance("db", Anchor(3, "h3"))
    store.advance("other", Anchor(1, "o1"))
    assert store.get("db") == Anchor(5, "h5")
    assert store.get("other") == Anchor(1, "o1")
    store.reset("db")
    assert store.get("db") is None


def test_head_anchor_write_failure_is_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = HeadAnchor(blocker / "anchor.json")  # parent is a file: cannot be created
    store.advance("db", Anchor(1, "h"))
    assert store.get("db") is None
