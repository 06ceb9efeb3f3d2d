"""EmergencyStop: the persisted brake (safety invariant 5).

One row (engine_state, id 1) is the system of record. Engines call `check()` before every
claim and every AWS call; it reads the row afresh (other processes change it) and fails
closed. Only an admin lifts the stop; engage and release are audited.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from backend.core import database
from backend.core.audit_chain import EventType, storable
from backend.core.automation_audit_logger import AuditLogger
from backend.core.models import EngineStateRow
from backend.core.types import utcnow
from backend.core.upsert import dialect_insert

log = structlog.get_logger(__name__)

ROW_ID = 1
AGAIN = "run `finops resume` again once Redis answers (or: redis-cli DEL finops:emergency-stop)"
RECORD = "run `finops emergency-stop` again once the database answers, to record it"


def redis_only(released_before: bool) -> str:
    """What a stop key in Redis without an engaged row means. Never released: only an
    engage that could not reach the database left it. Released: that, or a resume that
    could not clear the key; nothing here tells the two apart, so say both."""
    if not released_before:
        return (
            "STOPPED: emergency stop engaged in Redis only; not recorded in the database: "
            f"nothing executes; {RECORD} (to lift it: `finops resume`)"
        )
    return (
        "STOPPED: emergency stop key left in Redis (the database says released: a resume "
        "could not clear the key, or a stop was engaged while the database was down): "
        f"nothing executes; {AGAIN}; or, to keep the stop, {RECORD}"
    )


class StopSignal(Protocol):
    """A fast path that can say "stop" (backend.runtime.fast_path: a Redis key)."""

    def is_engaged(self) -> bool: ...

    def mirror(self, engaged: bool, reason: str | None) -> None: ...


class AlertSender(Protocol):
    """What EmergencyStop needs of NotificationService."""

    def send_emergency_alert(self, text: str) -> object: ...


@dataclass(frozen=True)
class EngineState:
    engaged: bool
    reason: str | None = None
    engaged_by: str | None = None
    engaged_at: dt.datetime | None = None
    released_by: str | None = None
    released_at: dt.datetime | None = None
    # The database says released, but the Redis fast path still says stop: check() refuses
    # everything on it, so every reader must say so too.
    stop_key_left: bool = False

    @property
    def stops(self) -> bool:
        """True while nothing may execute: engaged, or a stop key left in Redis."""
        return self.engaged or self.stop_key_left

    def describe(self) -> str:
        if self.engaged:
            who = f"by {self.engaged_by} at {_when(self.engaged_at)}"
            return f"EMERGENCY STOP ENGAGED {who}: {self.reason}"
        if self.stop_key_left:
            return redis_only(self.released_at is not None)
        if self.released_at is not None:
            who = f"by {self.released_by} at {_when(self.released_at)}"
            return f"running (emergency stop released {who})"
        return "running (emergency stop never engaged)"


@dataclass(frozen=True)
class EngageResult(EngineState):
    """engage()'s answer: the state, plus what went wrong around it (the stop still holds)."""

    audit_error: str | None = None
    alert_error: str | None = None


@dataclass(frozen=True)
class ReleaseResult(EngineState):
    """release()'s answer: the state, and why the Redis stop key could not be cleared."""

    fast_path_error: str | None = None

    def describe(self) -> str:
        if self.fast_path_error is None:
            return super().describe()
        return (
            "released in the database, but the emergency stop key in Redis could NOT be "
            f"cleared ({self.fast_path_error}): while it is there nothing executes; {AGAIN}"
        )


class EmergencyStopEngaged(RuntimeError):  # noqa: N818 - the name engines catch
    """Raised by `check()`: nothing may be claimed or called on AWS."""

    def __init__(self, message: str, *, state: EngineState | None = None, step: str = "") -> None:
        super().__init__(message)
        self.state = state
        self.step = step


class EmergencyStop:
    def __init__(
        self,
        *,
        session_factory: Callable[[], Session] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        audit: AuditLogger | None = None,
        notifier: AlertSender | None = None,
        fast_path: StopSignal | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._clock = clock
        self._audit = audit
        self._notifier = notifier
        # A fast path may only add a stop, never lift one: "not engaged" there still asks
        # the database, which stays the system of record. Without one given, REDIS_URL
        # (read on first use) makes it the Redis key every worker reads.
        self._fast_path = fast_path
        self._fast_path_resolved = fast_path is not None

    # -- the brake ---------------------------------------------------------------------------

    def engage(self, reason: str, actor: str) -> EngageResult:
        """Engage (again): idempotent, keeps the first engagement; audited; then alerts."""
        reason, actor = _required(reason, "reason"), _required(actor, "actor")
        audit_error: str | None = None
        # The fast path first: it can only add a stop, so setting it before the database
        # commits is safe, and every worker reading it stops a few milliseconds sooner.
        self._mirror(True, reason)
        try:
            # Normal path: the state and its audit event commit together (audit first).
            with self._transaction() as session:
                row, was_engaged = self._engage_row(session, reason, actor)
                outcome = "already_engaged" if was_engaged else "engaged"
                details = {"reason": reason, "engaged_at": row.engaged_at}
                self._audit_logger().record(
                    **_event(EventType.EMERGENCY_STOP, actor, outcome, details), session=session
                )
                state = _to_state(row)
        except Exception as exc:  # noqa: BLE001 - retried below without the audit event
            # The brake must never be held off by the audit log (unlike every other state
            # change, invariant 7): engage the state alone and report the missing event.
            audit_error = f"{type(exc).__name__}: {database.error_cause(exc)}"
            print(f"EMERGENCY STOP: audit event NOT written: {audit_error}", file=sys.stderr)
            log.error("emergency stop audit failed", error=audit_error)
            try:
                with self._transaction() as session:
                    row, was_engaged = self._engage_row(session, reason, actor)
                    state = _to_state(row)
            except SQLAlchemyError as db_exc:
                self._alert(f"Emergency stop by {actor} could NOT be persisted: {reason}")
                cause = database.error_cause(db_exc)
                raise database.DatabaseUnavailableError(
                    f"emergency stop not persisted: {cause} (audit: {audit_error})"
                ) from db_exc
        text = f"Emergency stop engaged by {actor}: {reason}"
        if was_engaged:
            text += f" (already engaged since {_when(state.engaged_at)})"
        if audit_error:
            text += f"\nAUDIT EVENT NOT WRITTEN: {audit_error}"
        return EngageResult(**vars(state), audit_error=audit_error, alert_error=self._alert(text))

    def release(self, actor: str, *, is_admin: bool) -> ReleaseResult:
        """Lift the stop. Admins only; the audit event must be written (not urgent, so strict)."""
        actor = _required(actor, "actor")
        if not is_admin:
            try:
                refused = {"why": "not an administrator"}
                self._audit_logger().log(
                    **_event(EventType.EMERGENCY_RESUME, actor, "refused", refused)
                )
            except Exception as exc:  # noqa: BLE001 - the refusal stands either way
                log.error("refused release not audited", error=str(exc))
            raise PermissionError(f"{actor} is not an administrator: the emergency stop stays on")
        with self._transaction() as session:
            row = self._locked_row(session)
            was_engaged = row.emergency_stop
            if was_engaged:
                row.emergency_stop = False
                row.released_by, row.released_at = actor, self._clock()
                row.updated_at = self._clock()
            outcome = "released" if was_engaged else "not_engaged"
            details = {"reason_was": row.reason, "engaged_at": row.engaged_at}
            self._audit_logger().record(
                **_event(EventType.EMERGENCY_RESUME, actor, outcome, details), session=session
            )
            state = _to_state(row)
        # After the commit: until then the fast path still stops.
        return ReleaseResult(**vars(state), fast_path_error=self._mirror(False, None))

    # -- reading -----------------------------------------------------------------------------

    def state(self) -> EngineState:
        """The database's row (raises if unreadable), and a stop key left in Redis (check()
        refuses on it): what every status reader reports."""
        state = self._row_state()
        if not state.engaged and self._fast_path_engaged():
            return dataclasses.replace(state, stop_key_left=True)
        return state

    def _row_state(self) -> EngineState:
        """Read fresh from the database: one primary-key select. Raises if it cannot."""
        try:
            with self._transaction() as session:
                row = session.scalars(select(EngineStateRow).where(EngineStateRow.id == ROW_ID))
                found = row.first()
                return _to_state(found) if found is not None else EngineState(engaged=False)
        except SQLAlchemyError as exc:
            raise database.DatabaseUnavailableError(
                f"emergency stop state unreadable: {database.error_cause(exc)}"
            ) from exc

    def set_stop_key(self, reason: str) -> str | None:
        """The Redis stop key set now, before anything asks the database (which may take
        seconds to say it is down): it can only add a stop. The error, if it could not."""
        return self._mirror(True, _required(reason, "reason"))

    def stop_key_set(self) -> bool:
        """The Redis stop key is there (False without Redis, or when Redis does not answer)."""
        return self._fast_path_engaged()

    def is_engaged(self) -> bool:
        """Fail closed: True when engaged, and True when the state cannot be read."""
        if self._fast_path_engaged():
            return True
        try:
            return self._row_state().engaged
        except Exception as exc:  # noqa: BLE001 - any doubt means stop
            log.warning("emergency stop state unreadable, failing closed", error=str(exc))
            return True

    def check(self, step: str = "") -> None:
        """Raise EmergencyStopEngaged if engaged or unreadable. Call before claims and AWS."""
        where = f" (refusing {step})" if step else ""
        try:
            current = self._row_state()
        except Exception as exc:
            raise EmergencyStopEngaged(
                f"emergency stop state unreadable, failing closed{where}: {exc}", step=step
            ) from exc
        if current.engaged:
            raise EmergencyStopEngaged(f"{current.describe()}{where}", state=current, step=step)
        if self._fast_path_engaged():
            raise EmergencyStopEngaged(f"emergency stop engaged (fast path){where}", step=step)

    # -- plumbing ----------------------------------------------------------------------------

    def _engage_row(self, session: Session, reason: str, actor: str) -> tuple[EngineStateRow, bool]:
        row = self._locked_row(session)
        was_engaged = row.emergency_stop
        now = self._clock()
        if not was_engaged:  # engaging again keeps the first reason, actor and time
            row.emergency_stop = True
            row.reason, row.engaged_by, row.engaged_at = reason, actor, now
            row.released_by = row.released_at = None
        row.updated_at = now
        session.flush()
        return row, was_engaged

    def _locked_row(self, session: Session) -> EngineStateRow:
        # Create the row if missing, then lock it: PostgreSQL by FOR UPDATE; SQLite's write
        # lock is already held by the INSERT, even when it inserted nothing.
        values = {"id": ROW_ID, "emergency_stop": False, "updated_at": self._clock()}
        insert = dialect_insert(session, EngineStateRow).values(**values)
        session.execute(insert.on_conflict_do_nothing())
        query = select(EngineStateRow).where(EngineStateRow.id == ROW_ID).with_for_update()
        return session.scalars(query.execution_options(populate_existing=True)).one()

    def _alert(self, text: str) -> str | None:
        # After the commit: a failed alert never undoes the stop.
        try:
            notifier = self._notifier
            if notifier is None:
                from backend.core.notification_service import NotificationService

                notifier = self._notifier = NotificationService()
            notifier.send_emergency_alert(text)
        except Exception as exc:  # noqa: BLE001 - reported, the stop holds
            error = f"{type(exc).__name__}: {exc}"
            print(f"EMERGENCY STOP: alert not sent: {error}", file=sys.stderr)
            log.error("emergency alert failed", error=error)
            return error
        return None

    def _signal(self) -> StopSignal | None:
        if not self._fast_path_resolved:
            self._fast_path_resolved = True
            from backend.config import get_settings
            from backend.core.stop_fast_path import RedisStopSignal

            url = get_settings().redis_url
            self._fast_path = RedisStopSignal(url) if url else None
        return self._fast_path

    def _mirror(self, engaged: bool, reason: str | None) -> str | None:
        """Set or clear the Redis key; the error, if it could not."""
        try:
            signal = self._signal()
            if signal is not None:
                signal.mirror(engaged, reason)
        except Exception as exc:  # noqa: BLE001 - the database is the record; say so loudly
            what = "set" if engaged else "cleared"
            print(f"EMERGENCY STOP: fast path not {what}: {exc}", file=sys.stderr)
            log.error("emergency stop fast path not updated", engaged=engaged, error=str(exc))
            return f"{type(exc).__name__}: {exc}"
        return None

    def _fast_path_engaged(self) -> bool:
        try:
            signal = self._signal()
            return signal is not None and signal.is_engaged()
        except Exception as exc:  # noqa: BLE001 - the database still decides
            log.warning("emergency stop fast path failed", error=str(exc))
            return False

    def _audit_logger(self) -> AuditLogger:
        if self._audit is None:
            self._audit = AuditLogger(session_factory=self._session_factory)
        return self._audit

    def _transaction(self) -> AbstractContextManager[Session]:
        return database.session_scope(factory=self._session_factory or database.session_factory())


def _event(kind: EventType, actor: str, outcome: str, details: dict[str, Any]) -> dict[str, Any]:
    fields = {"subject_type": "engine", "subject_id": ROW_ID, "actor": actor, "outcome": outcome}
    return {"event_type": kind, "details": details, **fields}


def _to_state(row: EngineStateRow) -> EngineState:
    fields = (row.reason, row.engaged_by, row.engaged_at, row.released_by, row.released_at)
    return EngineState(row.emergency_stop, *fields)


def _required(value: str, name: str) -> str:
    # NUL and undecodable bytes replaced, as the audit log does: no character in a reason
    # typed in a hurry, in whatever terminal encoding, can keep the brake off.
    value = storable(value or "").strip()
    if not value:
        raise ValueError(f"{name} is required")
    if name == "actor" and len(value) > 128:
        raise ValueError("actor is longer than 128 characters")
    return value


def _when(moment: dt.datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment else "?"


def not_persisted(stop_key_set: bool, exc: Exception | str, again: str) -> str:
    """What to say when the database did not take the stop: whether Redis did, what that is
    worth, and what to do (`exc`: the cause, or what to say of it; `again`: how to engage
    it again, e.g. "run `finops emergency-stop` again")."""
    scale = "scale the workers to zero (kubectl scale deployment finops-worker --replicas=0)"
    again = f"{again} once the database answers"
    if stop_key_set:
        # Every worker refuses to claim while the key is there, but a Redis restart or a
        # FLUSHDB drops it, and nothing records who stopped what: not a stop to rely on.
        return (
            f"EMERGENCY STOP SET IN REDIS ONLY, NOT persisted in the database ({exc}). "
            "Workers refuse new claims while the Redis key stays, but a Redis restart or "
            f"FLUSHDB lifts it: {scale}, and {again} to record it."
        )
    nowhere = "EMERGENCY STOP NOT ENGAGED: neither the database nor Redis took it"
    return f"{nowhere} ({exc}). {scale}, and {again}."
