"""A scheduled policy acts only just after its cron fires, never hours later.

An off-hours stop at 19:00 must not run at 11:00 because someone planned by hand, nor the
next morning because the workers were down overnight. So a scheduled policy plans only
within its run window (FINOPS_SCHEDULE_RUN_WINDOW_MINUTES after its latest fire time), its
actions carry the window's end (`not_after`), and one whose window passed before it ran is
blocked, with the slot and the window's end as the reason: never run late, never offered
to a person for approval again (the moment it was meant for has gone).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.core.action_transition import transition
from backend.core.automation_audit_logger import AuditLogger
from backend.core.models import ActionRow
from backend.domain.lifecycle import ActionState
from backend.domain.policy.model import Schedule
from backend.domain.safety import Rule, Verdict

S = ActionState
# Waiting states only: an executing action is past its claim, a finished one is history.
WAITING = (S.PROPOSED.value, S.AWAITING_APPROVAL.value, S.APPROVED.value)


@dataclass(frozen=True)
class RunWindow:
    slot: str  # the run's name (Schedule.slot): part of the action's idempotency key
    fired_at: dt.datetime  # the latest fire time at or before now
    ends: dt.datetime  # nothing of this run may start after it

    def describe(self) -> str:
        return f"slot {self.slot}, window until {self.ends.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def window_length(settings: Settings) -> dt.timedelta:
    return dt.timedelta(minutes=settings.schedule_run_window_minutes)


def current_window(schedule: Schedule, now: dt.datetime, settings: Settings) -> RunWindow | None:
    """The run window `now` falls in, or None when the latest fire is older than the window."""
    fired = schedule.latest_at_or_before(now)
    ends = fired + window_length(settings)
    if now > ends:
        return None
    return RunWindow(schedule.slot(now), fired, ends)


def outside_reason(schedule: Schedule, now: dt.datetime, settings: Settings) -> str:
    fired = schedule.latest_at_or_before(now)
    minutes = settings.schedule_run_window_minutes
    return (
        f"outside its run window: its last run ({schedule.slot(now)}) was more than "
        f"{minutes:g} minute(s) ago; next run {schedule.next_after(now).isoformat()} "
        f"(cron {schedule.cron!r} in {schedule.timezone}, last fired {fired.isoformat()})"
    )


def missed_reason(row: ActionRow) -> str:
    assert row.not_after is not None
    return (
        f"missed its scheduled run window: slot {row.slot}, which had to start by "
        f"{row.not_after:%Y-%m-%d %H:%M:%S} UTC; it will not run late (the next scheduled "
        "run plans afresh)"
    )


def window_passed(row: ActionRow, now: dt.datetime) -> bool:
    return row.not_after is not None and row.not_after <= now


def block_missed(session: Session, audit: AuditLogger, now: dt.datetime) -> list[int]:
    """Block every waiting action whose run window has passed; their ids."""
    rows = session.scalars(
        select(ActionRow)
        .where(
            ActionRow.state.in_(WAITING),
            ActionRow.not_after.is_not(None),
            ActionRow.not_after <= now,
        )
        .order_by(ActionRow.id)
    ).all()
    for row in rows:
        block(session, row, audit, now)
    return [r.id for r in rows]


def block(session: Session, row: ActionRow, audit: AuditLogger, now: dt.datetime) -> None:
    """Blocked, not expired back to the queue: a person approving it later would run an
    off-hours stop in office hours. Re-planning revives only the same slot's action, and
    only inside that slot's window, which has passed."""
    reason = missed_reason(row)
    verdict = Verdict(Rule.SCHEDULE_WINDOW, False, reason)
    window = {"slot": row.slot, "not_after": row.not_after.isoformat() if row.not_after else None}
    verdicts = list((row.safety_verdict or {}).get("verdicts", []))
    row.safety_verdict = {"allowed": False, "verdicts": [*verdicts, verdict.as_dict()]}
    row.approved_by = row.approved_at = row.approval_expires_at = None
    # The verdict, then the state change (as at planning and execution).
    audit.record(
        "safety_verdict",
        subject_type="action",
        subject_id=row.id,
        actor="schedule",
        outcome="blocked",
        details={"stage": "schedule", "summary": f"{verdict.rule.value}: {reason}", **window},
        session=session,
    )
    transition(
        session,
        row,
        S.BLOCKED,
        actor="schedule",
        audit=audit,
        event="safety_verdict",
        details={"stage": "schedule", "summary": reason, **window},
        now=now,
    )
