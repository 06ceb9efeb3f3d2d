"""The pure parts of the audit log: event types, hashing, chain checking, time windows.

No database here, so each rule can be tested on plain values. The one side effect is the
head anchor file (`HeadAnchor`), which remembers the newest committed event: a chain read
from the table alone cannot show that its last rows were deleted, because a truncated chain
is still a valid chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64


class EventType(StrEnum):
    SCAN = "scan"
    OPPORTUNITY = "opportunity"
    ACTION_PROPOSED = "action_proposed"
    SAFETY_VERDICT = "safety_verdict"
    APPROVAL = "approval"
    REJECTION = "rejection"
    EXECUTION = "execution"
    ROLLBACK = "rollback"
    EMERGENCY_STOP = "emergency_stop"
    EMERGENCY_RESUME = "emergency_resume"
    CONFIG_CHANGE = "config_change"
    POLICY_CHANGE = "policy_change"
    LOGIN = "login"
    API_CALL = "api_call"
    TEST = "test"


ACTION_EVENT_TYPES: frozenset[str] = frozenset(
    {
        EventType.ACTION_PROPOSED,
        EventType.SAFETY_VERDICT,
        EventType.APPROVAL,
        EventType.REJECTION,
        EventType.EXECUTION,
        EventType.ROLLBACK,
        EventType.EMERGENCY_STOP,
        EventType.EMERGENCY_RESUME,
    }
)

# Column widths from models.AuditEventRow: PostgreSQL refuses longer values, and a refused
# audit insert would block the action it describes.
FIELD_LIMITS = {
    "actor": 128,
    "event_type": 64,
    "subject_type": 64,
    "subject_id": 512,
    "outcome": 32,
}


@dataclass(frozen=True)
class AuditEvent:
    """One event as stored; `hash` covers every other field."""

    id: int
    occurred_at: dt.datetime
    actor: str
    event_type: str
    subject_type: str
    subject_id: str
    outcome: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def expected_hash(self) -> str:
        return event_hash(
            id=self.id,
            occurred_at=self.occurred_at,
            actor=self.actor,
            event_type=self.event_type,
            subject_type=self.subject_type,
            subject_id=self.subject_id,
            outcome=self.outcome,
            details=self.details,
            prev_hash=self.prev_hash,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "occurred_at": iso(self.occurred_at),
            "actor": self.actor,
            "event_type": self.event_type,
            "subject_type": self.subject_type,
            "subject_id": self.subject_id,
            "outcome": self.outcome,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def iso(moment: dt.datetime) -> str:
    """The one timestamp form that is hashed: UTC, microseconds, explicit offset."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(
    *,
    id: int,
    occurred_at: dt.datetime,
    actor: str,
    event_type: str,
    subject_type: str,
    subject_id: str,
    outcome: str,
    details: Mapping[str, Any],
    prev_hash: str,
) -> str:
    payload = canonical_json(
        {
            "id": id,
            "occurred_at": iso(occurred_at),
            "actor": actor,
            "event_type": event_type,
            "subject_type": subject_type,
            "subject_id": subject_id,
            "outcome": outcome,
            "details": dict(details),
            "prev_hash": prev_hash,
        }
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def storable(text: str) -> str:
    """`text` as every database stores it: NUL (PostgreSQL text refuses it) and lone
    surrogates (what Python makes of bytes a terminal sent in another encoding; no UTF-8
    holds them) become U+FFFD."""
    text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def clean_text(value: object, field: str) -> str:
    text = storable(str(value))
    limit = FIELD_LIMITS[field]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sanitize_details(value: Any) -> Any:
    """Make details survive a JSON/JSONB round trip unchanged, so stored hashes re-verify.

    JSONB rewrites 1e100 as an integer and -0.0 as 0, refuses NaN, NUL and lone surrogates;
    datetimes and other objects are not JSON at all. Each becomes the value the database will
    give back.
    """
    if isinstance(value, Mapping):
        return {storable(str(k)): sanitize_details(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [sanitize_details(v) for v in items]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0.0:
            return 0.0
        return int(value) if abs(value) >= 1e16 else value
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dt.datetime):
        return iso(value)
    return storable(str(value))


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    first_broken_id: int | None = None
    reason: str | None = None
    head_id: int | None = None
    head_hash: str | None = None

    def __str__(self) -> str:
        if self.ok:
            head = f", head event {self.head_id}" if self.head_id is not None else ""
            return f"audit chain OK: {self.checked} event(s) checked{head}"
        return (
            f"audit chain BROKEN at event {self.first_broken_id}: {self.reason} "
            f"({self.checked} event(s) checked)"
        )


@dataclass(frozen=True)
class Anchor:
    """The newest event known to have been committed."""

    id: int
    hash: str


def verify_events(
    events: Iterable[AuditEvent],
    *,
    from_start: bool = True,
    anchor: Anchor | None = None,
    first_id: int | None = None,
) -> ChainReport:
    """Check ids, links and hashes in id order.

    from_start=False checks a window (the last N events): the first event's own prev_hash
    is trusted, everything after it is checked, and the window must begin at `first_id`
    (a deleted first event is a gap too). The link check runs before the content check so
    that rows swapped into each other's places read as reordered, not edited.
    """
    prev: AuditEvent | None = None
    checked = 0
    anchor_seen = False

    def broken(event_id: int, reason: str) -> ChainReport:
        return ChainReport(False, checked, event_id, reason, prev.id if prev else None)

    for event in events:
        checked += 1
        if prev is None and from_start:
            if event.id != 1:
                return broken(event.id, f"id gap after 0 (row deleted): {_missing(0, event.id)}")
            if event.prev_hash != GENESIS_HASH:
                return broken(event.id, "first event's prev_hash is not the genesis value")
        if prev is None and not from_start and first_id is not None and event.id != first_id:
            gap = f"id gap after {first_id - 1} (row deleted): {_missing(first_id - 1, event.id)}"
            return broken(event.id, gap)
        if prev is not None:
            if event.id != prev.id + 1:
                reason = f"id gap after {prev.id} (row deleted): {_missing(prev.id, event.id)}"
                return broken(event.id, reason)
            if event.prev_hash != prev.hash:
                return broken(
                    event.id, "prev_hash does not match previous event (row deleted or reordered)"
                )
        if event.expected_hash() != event.hash:
            return broken(event.id, "hash mismatch (row edited)")
        if anchor is not None and event.id == anchor.id:
            anchor_seen = True
            if event.hash != anchor.hash:
                return broken(event.id, "hash differs from the anchored head (log rewritten)")
        prev = event

    head_id = prev.id if prev else 0
    if anchor is not None and not anchor_seen and anchor.id > head_id:
        reason = (
            f"id gap after {head_id} (row deleted): the log ends at event {head_id} "
            f"but event {anchor.id} was committed"
        )
        return ChainReport(False, checked, head_id + 1, reason, prev.id if prev else None)
    return ChainReport(True, checked, head_id=prev.id if prev else None, head_hash=_hash(prev))


def _missing(after: int, present: int) -> str:
    if present == after + 2:
        return f"event {after + 1} missing"
    if present <= after:
        return f"event {present} out of order"
    return f"events {after + 1}..{present - 1} missing"


def _hash(event: AuditEvent | None) -> str | None:
    return event.hash if event else None


class HeadAnchor:
    """A small JSON file: database -> newest committed (id, hash). It only moves forward."""

    _lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, database: str) -> Anchor | None:
        entry = self._read().get(database)
        if not isinstance(entry, dict):
            return None
        try:
            return Anchor(int(entry["id"]), str(entry["hash"]))
        except (KeyError, TypeError, ValueError):
            return None

    def advance(self, database: str, anchor: Anchor) -> None:
        """Best effort: a read-only disk must never fail the transaction that just committed."""
        try:
            with self._lock:
                data = self._read()
                current = self.get(database)
                if current is not None and current.id >= anchor.id:
                    return
                data[database] = {"id": anchor.id, "hash": anchor.hash}
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".audit-anchor")
                with os.fdopen(fd, "w") as handle:
                    json.dump(data, handle)
                os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write the audit head anchor %s: %s", self.path, exc)

    def reset(self, database: str) -> None:
        with self._lock:
            data = self._read()
            if data.pop(database, None) is not None:
                self.path.write_text(json.dumps(data))

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time_spec(value: str, *, now: dt.datetime) -> dt.datetime:
    """An ISO time (naive means UTC) or an age like 30m, 24h, 7d counted back from now."""
    match = _RELATIVE.match(value)
    if match:
        return now - dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"expected an ISO time like 2026-01-01T00:00:00Z or an age like 30m, 24h, 7d; "
            f"got {value!r}"
        ) from None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def short_details(details: Mapping[str, Any], width: int = 80) -> str:
    text = " ".join(f"{k}={canonical_json(v)}" for k, v in sorted(details.items()))
    return text if len(text) <= width else text[: width - 1] + "…"


def event_line(event: AuditEvent, *, with_id: bool = False) -> str:
    """One readable line: time, actor, event, subject, outcome, short details."""
    when = event.occurred_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    subject = f"{event.subject_type}:{event.subject_id}"
    prefix = f"#{event.id:<6} " if with_id else ""
    line = (
        f"{prefix}{when}  {event.actor:<16} {event.event_type:<16} {subject:<32} "
        f"{event.outcome:<10} {short_details(event.details)}"
    )
    return line.rstrip()


def hours_label(hours: float) -> str:
    return f"{hours:g}h"
