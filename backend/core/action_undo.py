"""Undo one action from its recorded pre-state and backup, and record how it ended.

Every end is audited as a `rollback` event: rolled back (the state change), impossible
(the undo cannot be done: say why), interrupted by the emergency stop, or failed on an AWS
error half-way (run it again: every undo step first looks for what a previous try made).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.action_transition import transition
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStopEngaged
from backend.core.models import ActionRow
from backend.core.repositories import sqlite_write_lock
from backend.core.rollback_lock import rollback_lock
from backend.domain.lifecycle import ActionState
from backend.domain.resources import Resource, ResourceKind
from backend.providers.aws.operations import CannotUndo, ResourceGone, operation_for
from backend.providers.aws.retry import describe_error

if TYPE_CHECKING:
    from backend.core.action_engine import ActionOutcome
    from backend.core.execution_context import ExecutionContext

S = ActionState
ROLLED_BACK_FROM = (S.SUCCEEDED, S.FAILED)
ALREADY = "already rolled back by another request"
NOTHING_CHANGED = "nothing to undo: the action failed before AWS changed anything"
UNDER_WAY = "another rollback of this action is under way: its result will be in the audit log"


def rollback_one(
    context: ExecutionContext, action_id: int, actor: str, audit: AuditLogger
) -> ActionOutcome:
    """Raises EmergencyStopEngaged (nothing tried) and LookupError (no such action)."""
    from backend.core.action_engine import ActionOutcome

    context.emergency.check("a rollback")
    with rollback_lock(action_id) as held:
        if not held:
            return ActionOutcome(action_id, "skipped", UNDER_WAY)
        return _rollback(context, action_id, actor, audit)


def _rollback(
    context: ExecutionContext, action_id: int, actor: str, audit: AuditLogger
) -> ActionOutcome:
    from backend.core.action_engine import ActionOutcome
    from backend.core.execution_context import resource_from
    from backend.core.execution_guard import Guard

    guard = Guard(context.emergency)
    with session_scope() as session:
        row = session.get(ActionRow, action_id)
        if row is None:
            raise LookupError(f"no action {action_id}")
        if row.state not in ROLLED_BACK_FROM or not row.pre_state:
            return ActionOutcome(
                action_id,
                "skipped",
                f"{row.state}: only a succeeded or failed action with a "
                "recorded pre-state can be rolled back",
            )
        if row.state == S.FAILED and (row.post_state or {}).get("nothing_changed"):
            # It failed before AWS changed anything: undoing it would change what someone
            # else may have changed since (an instance its owner started by hand, say).
            done = NOTHING_CHANGED
            transition(
                session, row, S.ROLLED_BACK, actor=actor, audit=audit, event="rollback",
                details={"done": done},
            )  # fmt: skip
            return ActionOutcome(action_id, "rolled_back", done)
        op = operation_for(row.action, ResourceKind(row.kind))
        ctx = dataclasses.replace(
            context.op_context(row, guard, check_stop=True), left_as=_left_as(row.post_state)
        )
        recorded, backup, params = row.pre_state, row.backup_ref, dict(row.params)
    try:
        pre = resource_from(recorded)
    except (KeyError, TypeError, ValueError) as exc:  # edited by hand, or a bug's
        why = f"the recorded pre-state is unreadable ({type(exc).__name__}: {exc})"
        _record(action_id, actor, audit, "impossible", {"why": why})
        return ActionOutcome(action_id, "failed", f"cannot undo: {why}")
    try:
        done = op.undo(ctx, pre, backup, params)
    except (CannotUndo, ResourceGone) as exc:
        _record(action_id, actor, audit, "impossible", {"why": str(exc)})
        return ActionOutcome(action_id, "failed", f"cannot undo: {exc}")
    except EmergencyStopEngaged as exc:
        _record(action_id, actor, audit, "interrupted", {"why": str(exc), "changes": guard.made})
        return ActionOutcome(
            action_id,
            "stopped",
            f"{exc}; the rollback made {guard.made} change(s): run it again once the "
            "stop is released",
        )
    except Exception as exc:  # noqa: BLE001 - an AWS error half-way: recorded, never lost
        error = describe_error(exc)
        _record(action_id, actor, audit, "failed", {"error": error, "changes": guard.made})
        return ActionOutcome(
            action_id,
            "failed",
            f"rollback failed after {guard.made} change(s): {error}; run it again (each "
            "undo step first looks for what a previous try made)",
        )
    with session_scope() as session:
        row = _locked(session, action_id)
        if row.state not in ROLLED_BACK_FROM:
            # Another request ended it while this undo ran: audited, what this one did too.
            why = ALREADY if row.state == S.ROLLED_BACK else f"it became {row.state} meanwhile"
            audit.record(
                "rollback", subject_type="action", subject_id=action_id, actor=actor,
                outcome="skipped", details={"why": why, "done": done}, session=session,
            )  # fmt: skip
            return ActionOutcome(action_id, "skipped", f"{why} (this request's undo: {done})")
        transition(
            session, row, S.ROLLED_BACK, actor=actor, audit=audit, event="rollback",
            details={"done": done},
        )  # fmt: skip
    return ActionOutcome(action_id, "rolled_back", done)


def _locked(session: Session, action_id: int) -> ActionRow:
    """The row, read under a write lock: of two requests at once, the second reads the
    first's end, not the state both began from."""
    sqlite_write_lock(session)  # FOR UPDATE below is PostgreSQL's
    row = session.scalars(
        select(ActionRow)
        .where(ActionRow.id == action_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if row is None:
        raise LookupError(f"no action {action_id}")
    return row


def _record(
    action_id: int, actor: str, audit: AuditLogger, outcome: str, details: dict[str, Any]
) -> None:
    with session_scope() as session:
        audit.record(
            "rollback",
            subject_type="action",
            subject_id=action_id,
            actor=actor,
            outcome=outcome,
            details=details,
            session=session,
        )


def _left_as(post_state: dict[str, Any] | None) -> Resource | None:
    """The resource as the action left it, when its record holds one (a failed action's
    holds only what it began)."""
    from backend.core.execution_context import resource_from

    try:
        return resource_from(post_state) if post_state and "resource_id" in post_state else None
    except (KeyError, TypeError, ValueError):
        return None
