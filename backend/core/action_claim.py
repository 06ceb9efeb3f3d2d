"""Who may take an approved action to execute it: its policy not held in the database, the
action still due, and no other claimant. One UPDATE decides between claimants."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.core.database import session_scope
from backend.core.models import ActionRow
from backend.core.policy_manager import database_holds
from backend.core.repositories import due_conditions
from backend.domain.lifecycle import ActionState
from backend.providers.aws.retry import describe_error


def why_held(action_id: int, now: dt.datetime) -> str | None:
    """Why the action's policy may not run now, read from the database (None: it may).
    The pack an engine was handed may be a file's, or read before a pause; and a state
    that cannot be read holds the action too (fail closed)."""
    try:
        with session_scope() as session:
            name = session.scalar(select(ActionRow.policy_name).where(ActionRow.id == action_id))
            why = database_holds(session, name, now) if name is not None else []
    except Exception as exc:  # noqa: BLE001 - unknown is held
        return f"cannot read whether its policy is held: {describe_error(exc)}"
    return f"policy {name} is held ({'; '.join(why)})" if why else None


def claim(
    session: Session, action_id: int, worker: str, now: dt.datetime, settings: Settings
) -> bool:
    """Atomic: one UPDATE moves a due action to executing; only one claimant wins. Due is
    asked again here, not only when the run admitted it: a task queued before its approval
    expired may be consumed after."""
    deadline = now + dt.timedelta(minutes=settings.action_deadline_minutes)
    result = session.execute(
        update(ActionRow)
        .where(ActionRow.id == action_id, *due_conditions(now))
        .values(
            state=ActionState.EXECUTING.value,
            claimed_by=worker,
            claimed_at=now,
            deadline=deadline,
            attempts=ActionRow.attempts + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)
