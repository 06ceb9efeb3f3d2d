"""How an execution attempt ends when it does not succeed: interrupted by the emergency stop,
failed (its record says whether AWS was partly changed), or given up because the action is no
longer this worker's (execution_guard.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from backend.core.action_transition import transition
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.execution_guard import Guard
from backend.domain.lifecycle import ActionState

if TYPE_CHECKING:
    from backend.core.action_engine import ActionOutcome

S = ActionState
log = structlog.get_logger(__name__)


class ChangeUnverifiedError(RuntimeError):
    """The change was made in AWS, but reading it back failed."""


def change_started(post_state: dict[str, Any] | None) -> bool:
    return bool(post_state and post_state.get("change_started"))


def short_backup(backup: str | None) -> str | None:
    if backup and backup.startswith("config:"):
        return "configuration captured"
    return backup


def interrupted(
    action_id: int, audit: AuditLogger, worker: str, guard: Guard, why: str
) -> ActionOutcome:
    from backend.core.action_engine import ActionOutcome

    with session_scope() as session:
        row = guard.row(session, action_id)
        if guard.changes == 0:
            # nothing in AWS changed yet: hand the action back untouched (backup kept)
            transition(
                session,
                row,
                S.APPROVED,
                actor=worker,
                audit=audit,
                event="execution",
                details={"interrupted": why, "changed": False},
            )
            return ActionOutcome(action_id, "stopped", why)
        if guard.made:  # the change began: a retry resumes it from the first pre-state
            row.post_state = row.post_state or {"change_started": True, "verified": False}
        row.error = (
            f"interrupted by the emergency stop after {guard.changes} change(s); "
            "may be partial: the pre-state and backup are kept, roll back to undo"
        )
        transition(
            session,
            row,
            S.FAILED,
            actor=worker,
            audit=audit,
            event="execution",
            details={"interrupted": why, "changed": True},
        )
        return ActionOutcome(action_id, "failed", row.error)


def claim_lost(action_id: int, audit: AuditLogger, worker: str, why: str) -> ActionOutcome:
    """Said and audited; the action's state is its new holder's to write."""
    from backend.core.action_engine import ActionOutcome

    log.warning("execution given up: claim lost", action=action_id, worker=worker, why=why)
    with session_scope() as session:
        audit.record(
            "execution",
            subject_type="action",
            subject_id=action_id,
            actor=worker,
            outcome="claim lost",
            details={"why": why, "note": "nothing more was called or written"},
            session=session,
        )
    return ActionOutcome(action_id, "claim-lost", why)


def failed(
    action_id: int,
    audit: AuditLogger,
    worker: str,
    why: str,
    guard: Guard,
    changed: bool = False,
    refused: bool = False,
) -> ActionOutcome:
    """The changes AWS made in this attempt (guard.made; a backup is none), or an earlier
    attempt's, mark the resource partly changed, and a retry resumes the change. `refused`:
    the failure is AWS's answer refusing the call (not a lost connection)."""
    from backend.core.action_engine import ActionOutcome

    with session_scope() as session:
        row = guard.row(session, action_id)
        if not changed and (guard.made or change_started(row.post_state)):
            changed = True
            row.post_state = row.post_state or {"change_started": True, "verified": False}
            why += (
                " (the resource is partly changed: AWS made the change's first step(s); "
                "the pre-state and backup are kept, retry resumes, roll back undoes)"
            )
        elif not changed and not row.post_state and (guard.changes == 0 or refused):
            # Nothing reached AWS, or AWS refused it: a rollback has nothing to undo, and
            # must not apply the inverse to a resource someone else has changed since.
            row.post_state = {"change_started": False, "nothing_changed": True}
        row.error = why
        row.finished_at = None
        transition(
            session,
            row,
            S.FAILED,
            actor=worker,
            audit=audit,
            event="execution",
            details={"error": why, "backup": short_backup(row.backup_ref), "changed": changed},
        )
    return ActionOutcome(action_id, "failed", why)
