"""AuditLogger: the hash-chained audit log (safety invariant 7, audit first).

`record()` appends inside the caller's transaction, so a state change and its audit event
commit together or not at all; a failed audit insert fails the caller's transaction.
`log()` does the same in a transaction of its own.

One chain, never forked: each writer serialises on the chain head before reading it
(PostgreSQL: a transaction-scoped advisory lock; SQLite: the database write lock, taken
with a no-op UPDATE) and gives the new event id head + 1. The primary key backs this up:
two writers that read the same head cannot both insert, one fails instead of forking.
Ids are therefore gapless even when transactions roll back, and a gap means a deletion.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import event as sa_event
from sqlalchemy import insert, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, SessionTransaction

from backend.config import get_settings, normalise_database_url
from backend.core import database
from backend.core.audit_chain import (
    ACTION_EVENT_TYPES,
    GENESIS_HASH,
    Anchor,
    AuditEvent,
    ChainReport,
    EventType,
    HeadAnchor,
    canonical_json,
    clean_text,
    event_hash,
    event_line,
    hours_label,
    parse_time_spec,
    sanitize_details,
    verify_events,
)
from backend.core.models import AuditEventRow
from backend.core.runbook_output import echo
from backend.core.types import utcnow

__all__ = ["AuditLogError", "AuditLogger", "ChainReport", "EventType"]

# Any fixed 64-bit key will do; every audit writer in every process must use this one.
CHAIN_LOCK_KEY = 0x66696E6F70734155  # "finopsAU"
TABLE = AuditEventRow.__tablename__
_PENDING = "finops_audit_pending"  # session.info key: events written, not yet committed

TimeSpec = dt.datetime | str


class AuditLogError(RuntimeError):
    """The audit log could not be written or read; the message says why."""


class AuditLogger:
    def __init__(
        self,
        *,
        session_factory: Callable[[], Session] | None = None,
        database_url: str | None = None,
        anchor: HeadAnchor | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._database_url = normalise_database_url(database_url) if database_url else None
        self._anchor = anchor

    # -- writing ----------------------------------------------------------------------------

    def record(
        self,
        event_type: EventType | str,
        *,
        subject_type: str,
        subject_id: str | int,
        actor: str,
        outcome: str,
        details: dict[str, Any] | None = None,
        session: Session,
    ) -> AuditEvent:
        """Append one event in the caller's transaction. No commit: the caller owns it."""
        kind = EventType(event_type)  # an unknown type is a programming error: ValueError
        try:
            self._lock_chain(session)
            head = session.execute(
                select(AuditEventRow.id, AuditEventRow.hash)
                .order_by(AuditEventRow.id.desc())
                .limit(1)
            ).first()
            prev_id, prev_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
            fields: dict[str, Any] = {
                "id": prev_id + 1,
                "occurred_at": utcnow(),
                "actor": clean_text(actor, "actor"),
                "event_type": clean_text(kind.value, "event_type"),
                "subject_type": clean_text(subject_type, "subject_type"),
                "subject_id": clean_text(subject_id, "subject_id"),
                "outcome": clean_text(outcome, "outcome"),
                "details": sanitize_details(details or {}),
                "prev_hash": prev_hash,
            }
            fields["hash"] = event_hash(**fields)
            session.execute(insert(AuditEventRow).values(**fields))
        except SQLAlchemyError as exc:
            raise AuditLogError(
                f"audit event not written ({event_type}): {database.error_cause(exc)}"
            ) from exc
        event = AuditEvent(**fields)
        self._track(session, event)
        return event

    def log(
        self,
        event_type: EventType | str,
        *,
        subject_type: str,
        subject_id: str | int,
        actor: str,
        outcome: str,
        details: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """`record()` in a transaction of its own, for callers that have none."""
        with self._transaction() as session:
            return self.record(
                event_type,
                subject_type=subject_type,
                subject_id=subject_id,
                actor=actor,
                outcome=outcome,
                details=details,
                session=session,
            )

    def _lock_chain(self, session: Session) -> None:
        dialect = session.get_bind(AuditEventRow).dialect.name
        if dialect == "postgresql":
            # Held to the end of the caller's transaction: the next writer reads our head.
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK_KEY})
        elif dialect == "sqlite":
            # A write statement takes SQLite's one write lock now, before the head is read,
            # instead of at the INSERT (which would let two writers read the same head).
            session.execute(text(f"UPDATE {TABLE} SET id = id WHERE 0"))

    # -- the head anchor: remembers committed events so a deleted tail shows ----------------

    def _track(self, session: Session, event: AuditEvent) -> None:
        if _PENDING not in session.info:
            session.info[_PENDING] = []
            anchor, key = self._anchor_store(), _database_key(session)
            on_commit, on_rollback = _anchor_hooks(session, anchor, key)
            sa_event.listen(session, "after_commit", on_commit)
            sa_event.listen(session, "after_soft_rollback", on_rollback)
        owner = session.get_nested_transaction() or session.get_transaction()
        session.info[_PENDING].append((owner, Anchor(event.id, event.hash)))

    def _anchor_store(self) -> HeadAnchor:
        if self._anchor is None:
            self._anchor = HeadAnchor(Path(get_settings().data_dir) / "audit-anchor.json")
        return self._anchor

    def forget_head(self) -> None:
        """Drop the remembered head: only after the database was deliberately recreated."""
        with self._transaction() as session:
            self._anchor_store().reset(_database_key(session))

    # -- reading ----------------------------------------------------------------------------

    def verify(self, *, last: int | None = None) -> ChainReport:
        """Check the whole chain (or its last `last` events) and the remembered head."""
        with self._transaction() as session:
            key = _database_key(session)
            start = 1
            if last is not None:
                head_id = session.execute(
                    select(AuditEventRow.id).order_by(AuditEventRow.id.desc()).limit(1)
                ).scalar()
                start = max(1, int(head_id or 0) - last + 1)
            rows = session.scalars(
                select(AuditEventRow)
                .where(AuditEventRow.id >= start)
                .order_by(AuditEventRow.id)
                .execution_options(yield_per=500)
            )
            anchor = self._anchor_store().get(key)
            report = verify_events(
                (to_event(row) for row in rows),
                from_start=last is None,
                anchor=anchor,
                first_id=start,
            )
        if report.ok and report.head_id is not None and report.head_hash is not None:
            self._anchor_store().advance(key, Anchor(report.head_id, report.head_hash))
        return report

    def events(
        self,
        since: TimeSpec,
        until: TimeSpec | None = None,
        *,
        event_types: frozenset[str] | None = None,
    ) -> list[AuditEvent]:
        """Events in [since, until), oldest first."""
        now = utcnow()
        start = _moment(since, now)
        query = select(AuditEventRow).where(AuditEventRow.occurred_at >= start)
        if until is not None:
            query = query.where(AuditEventRow.occurred_at < _moment(until, now))
        if event_types is not None:
            query = query.where(AuditEventRow.event_type.in_(sorted(event_types)))
        with self._transaction() as session:
            return [to_event(row) for row in session.scalars(query.order_by(AuditEventRow.id))]

    def get_recent_actions(self, hours: float = 1) -> list[dict[str, Any]]:
        """Action events of the last `hours`, newest last; also printed for the runbook."""
        label = hours_label(hours)
        since = utcnow() - dt.timedelta(hours=hours)
        try:
            found = self.events(since, event_types=ACTION_EVENT_TYPES)
        except SQLAlchemyError as exc:
            echo(f"audit log unreadable: {database.error_cause(exc)}")
            raise AuditLogError(f"audit log unreadable: {database.error_cause(exc)}") from exc
        if not found:
            echo(f"no action events in the last {label}")
            return []
        echo(f"{len(found)} action event(s) in the last {label} (oldest first):")
        echo(f"{'time':<20}  {'actor':<16} {'event':<16} {'subject':<32} {'outcome':<10} details")
        for event in found:
            echo(event_line(event))
        return [_readable(event) for event in found]

    def timeline(self, since: TimeSpec, until: TimeSpec | None = None) -> list[str]:
        """Every event in the window as one readable line, for an incident timeline."""
        return [event_line(event, with_id=True) for event in self.events(since, until)]

    def export_jsonl(
        self, since: TimeSpec, until: TimeSpec | None = None, *, stream: TextIO
    ) -> int:
        """Write the window as JSON Lines, hashes included so the export can be re-checked."""
        found = self.events(since, until)
        for event in found:
            stream.write(canonical_json(event.to_dict()) + "\n")
        stream.flush()
        return len(found)

    # -- the runbook's probe ----------------------------------------------------------------

    def test_logging(self) -> str:
        """Write a `test` event, read it back, check it and the chain tail. Never raises."""
        try:
            return "audit logging OK: " + self._probe()
        except AuditLogError as exc:
            return f"audit logging FAILED: {exc}"
        except Exception as exc:  # noqa: BLE001 - the runbook prints the reason instead
            return f"audit logging FAILED: {type(exc).__name__}: {exc}"

    def _probe(self) -> str:
        try:
            with self._transaction() as session:
                session.execute(text("SELECT 1"))
                where = _database_key(session)
                has_table = inspect(session.connection()).has_table(TABLE)
        except SQLAlchemyError as exc:
            raise AuditLogError(f"database unreachable: {database.error_cause(exc)}") from exc
        if not has_table:
            raise AuditLogError(f"table {TABLE} missing in {where} (run `finops db upgrade`)")
        written = self.log(
            EventType.TEST,
            subject_type="audit_log",
            subject_id="test_logging",
            actor=_actor(),
            outcome="ok",
            details={"probe": "test_logging"},
        )
        with self._transaction() as session:
            row = session.get(AuditEventRow, written.id)
            stored = to_event(row) if row is not None else None
        if stored is None:
            raise AuditLogError(f"readback mismatch: event {written.id} not found after commit")
        differ = [k for k, v in written.to_dict().items() if stored.to_dict()[k] != v]
        if differ:
            raise AuditLogError(
                f"readback mismatch: event {written.id} field(s) {', '.join(differ)} differ"
            )
        if stored.expected_hash() != stored.hash:
            raise AuditLogError(f"readback mismatch: event {written.id} hash does not verify")
        report = self.verify(last=100)
        if not report.ok:
            raise AuditLogError(f"wrote event {written.id} but the chain is broken: {report}")
        return (
            f"wrote and read back event {written.id} "
            f"(chain verified over last {report.checked} events)"
        )

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        factory = self._session_factory or database.session_factory(self._database_url)
        with database.session_scope(factory=factory) as session:
            yield session


def _anchor_hooks(
    session: Session, anchor: HeadAnchor, key: str
) -> tuple[Callable[[Session], None], Callable[[Session, SessionTransaction], None]]:
    def on_commit(sess: Session) -> None:
        if sess.get_nested_transaction() is not None:
            return  # a savepoint released: the outer transaction may still roll back
        pending: list[tuple[SessionTransaction, Anchor]] = sess.info.get(_PENDING, [])
        if pending:
            anchor.advance(key, max((a for _, a in pending), key=lambda a: a.id))
            pending.clear()

    def on_rollback(sess: Session, ended: SessionTransaction) -> None:
        pending: list[tuple[SessionTransaction, Anchor]] = sess.info.get(_PENDING, [])
        pending[:] = [(owner, a) for owner, a in pending if not _within(owner, ended)]

    return on_commit, on_rollback


def _within(owner: SessionTransaction | None, ended: SessionTransaction) -> bool:
    while owner is not None:
        if owner is ended:
            return True
        owner = owner.parent
    return False


def to_event(row: AuditEventRow) -> AuditEvent:
    """A stored row as the chain's event (what `verify` hashes)."""
    return AuditEvent(
        id=row.id,
        occurred_at=row.occurred_at,
        actor=row.actor,
        event_type=row.event_type,
        subject_type=row.subject_type,
        subject_id=row.subject_id,
        outcome=row.outcome,
        details=dict(row.details or {}),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def _readable(event: AuditEvent) -> dict[str, Any]:
    data = event.to_dict()
    del data["prev_hash"], data["hash"]
    return data


def _moment(value: TimeSpec, now: dt.datetime) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return parse_time_spec(value, now=now)


def _database_key(session: Session) -> str:
    return session.get_bind(AuditEventRow).engine.url.render_as_string(hide_password=True)


def _actor() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
