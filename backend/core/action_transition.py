"""One move of an action's state, audited in the same transaction."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from backend.core.automation_audit_logger import AuditLogger
from backend.core.models import ActionRow
from backend.core.types import utcnow
from backend.domain.lifecycle import ActionState, check_transition


def transition(
    session: Session,
    row: ActionRow,
    wanted: ActionState,
    *,
    actor: str,
    audit: AuditLogger,
    event: str,
    details: dict[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> None:
    """Move an action to a new state and audit it in the same transaction (audit first)."""
    check_transition(row.state, wanted)
    before = row.state
    row.state = wanted.value
    row.updated_at = now or utcnow()
    audit.record(
        event,
        subject_type="action",
        subject_id=row.id,
        actor=actor,
        outcome=wanted.value,
        details={
            "from": before,
            "policy": row.policy_name,
            "action": row.action,
            "resource": row.resource_id,
            **(details or {}),
        },
        session=session,
    )
