"""A scheduled policy acts only in the run window after its cron fires: an off-hours stop is
neither planned at 11:00 by a person's `plan`, nor run the next morning when the workers
were down at 19:00 (FINOPS_SCHEDULE_RUN_WINDOW_MINUTES, 30 by default)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from backend.core.action_engine import ActionEngine
from backend.core.action_planner import ActionPlanner, ApprovalError, PlanResult
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import ActionRow, AuditEventRow, OpportunityRow, ResourceRow
from backend.core.repositories import due_conditions
from backend.domain.policy import load_text
from backend.domain.policy.model import PolicyPack

UTC = dt.UTC
TUE_1100_PARIS = dt.datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
FRI_1900_PARIS = dt.datetime(2026, 3, 6, 18, 0, 5, tzinfo=UTC)
SLOT = "2026-03-06T19:00:00 Europe/Paris"

PACK = """
policies:
  - name: offhours
    resource: ec2
    filters: ["State.Name": running, "tag:finops:schedule": office-hours]
    action: stop
    mode: {mode}
    schedule: {{cron: "0 19 * * 1-5", timezone: Europe/Paris}}
"""


def pack(mode: str = "auto") -> PolicyPack:
    return load_text(PACK.format(mode=mode), "offhours.yml")


def seed(now: dt.datetime) -> None:
    upgrade()
    with session_scope() as session:
        r = ResourceRow(
            account_id="123456789012",
            region="us-east-1",
            kind="ec2",
            resource_id="i-0dev",
            state="running",
            tags={"finops:schedule": "office-hours"},
            attributes={"InstanceType": "t3.micro", "State": {"Name": "running"}},
            first_seen=now,
            last_seen=now,
        )
        session.add(r)
        session.flush()
        session.add(
            OpportunityRow(
                resource_pk=r.id,
                policy_name="offhours",
                action="stop",
                params={},
                status="open",
                first_found=now,
                last_seen=now,
                estimated_monthly_savings=5.0,
                evidence={},
            )
        )


def plan_at(now: dt.datetime, mode: str = "auto", by: str = "cli") -> PlanResult:
    with session_scope() as session:
        return ActionPlanner(clock=lambda: now).plan(session, pack(mode), requested_by=by)


def due_at(now: dt.datetime) -> list[int]:
    with session_scope() as session:
        return list(session.scalars(select(ActionRow.id).where(*due_conditions(now))))


def only_action() -> ActionRow:
    with session_scope() as session:
        row = session.scalars(select(ActionRow)).one()
        session.expunge(row)
        return row


def test_a_plan_in_office_hours_makes_no_off_hours_stop(any_database: str) -> None:
    seed(TUE_1100_PARIS - dt.timedelta(days=1))
    result = plan_at(TUE_1100_PARIS)  # `finops plan` at 11:00 on a Tuesday, Paris
    assert result.created == [] and due_at(TUE_1100_PARIS) == []
    assert "outside its run window" in result.outside_window["offhours"]
    assert "2026-03-10T19:00:00+01:00" in result.outside_window["offhours"]  # next run


def test_a_plan_in_the_window_approves_until_the_window_ends(any_database: str) -> None:
    seed(FRI_1900_PARIS - dt.timedelta(hours=1))  # a scan just before: fresh evidence
    result = plan_at(FRI_1900_PARIS + dt.timedelta(minutes=20))  # 19:20: in the window
    assert len(result.approved) == 1 and result.outside_window == {}
    row = only_action()
    end = dt.datetime(2026, 3, 6, 18, 30, tzinfo=UTC)  # 19:00 Paris + 30 minutes
    assert (row.slot, row.not_after, row.approval_expires_at) == (SLOT, end, end)
    assert due_at(end - dt.timedelta(seconds=1)) == [row.id]
    assert due_at(end) == []
    # just past the window, a plan makes nothing new (not even for the same slot)
    assert plan_at(end + dt.timedelta(minutes=1)).outside_window


def test_the_window_is_configurable(any_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.config import reset_settings_cache

    monkeypatch.setenv("FINOPS_SCHEDULE_RUN_WINDOW_MINUTES", "120")
    reset_settings_cache()
    seed(FRI_1900_PARIS - dt.timedelta(hours=1))
    assert len(plan_at(FRI_1900_PARIS + dt.timedelta(minutes=90)).approved) == 1
    assert only_action().not_after == dt.datetime(2026, 3, 6, 20, 0, tzinfo=UTC)


def test_a_stop_planned_at_19_does_not_run_the_next_day(any_database: str) -> None:
    """Workers down (or an emergency stop) overnight: the next morning it is not due, the
    sweep blocks it with the slot and the window's end, and nobody can approve it again."""
    seed(FRI_1900_PARIS - dt.timedelta(days=1))
    plan_at(FRI_1900_PARIS, by="scheduler")
    saturday = FRI_1900_PARIS + dt.timedelta(hours=14)
    assert due_at(saturday) == []
    engine = ActionEngine(pack=pack(), clock=lambda: saturday)
    assert engine.start_run(dry_run=False).batch == []
    with session_scope() as session:
        ActionPlanner(clock=lambda: saturday).expire_approvals(session)
    row = only_action()
    assert row.state == "blocked" and row.approval_expires_at is None
    reason = row.safety_verdict["verdicts"][-1]
    assert reason["rule"] == "schedule-window" and not reason["ok"]
    assert SLOT in reason["reason"] and "2026-03-06 18:30:00 UTC" in reason["reason"]
    with session_scope() as session:
        events = session.scalars(
            select(AuditEventRow).where(AuditEventRow.actor == "schedule")
        ).all()
        # the verdict (counted by the safety metrics), then the state change
        assert [(e.outcome, "from" in e.details) for e in events] == [
            ("blocked", False),
            ("blocked", True),
        ]
        assert events[0].details["summary"].startswith("schedule-window: ")
        assert all(e.details["slot"] == SLOT for e in events)
    with session_scope() as session, pytest.raises(ApprovalError):
        ActionPlanner(clock=lambda: saturday).approve(session, row.id, "alice")


def test_a_late_claim_blocks_the_action_instead_of_running_it(any_database: str) -> None:
    """A task queued at 19:29 and taken at 19:31 (the claim asks again) is not run."""
    seed(FRI_1900_PARIS - dt.timedelta(days=1))
    plan_at(FRI_1900_PARIS, by="scheduler")
    late = dt.datetime(2026, 3, 6, 18, 31, tzinfo=UTC)
    engine = ActionEngine(pack=pack(), clock=lambda: late)
    outcome = engine.execute_one(only_action().id, None, dry_run=False)
    assert outcome.result == "blocked" and SLOT in outcome.detail, outcome
    assert only_action().state == "blocked"


def test_a_person_approves_within_the_window_only(any_database: str) -> None:
    seed(FRI_1900_PARIS - dt.timedelta(days=1))
    plan_at(FRI_1900_PARIS, mode="approval", by="scheduler")
    ident = only_action().id
    in_window = FRI_1900_PARIS + dt.timedelta(minutes=10)
    with session_scope() as session:
        row = ActionPlanner(clock=lambda: in_window).approve(session, ident, "alice")
        # not the 24-hour TTL: the end of the window
        assert row.approval_expires_at == dt.datetime(2026, 3, 6, 18, 30, tzinfo=UTC)
    with session_scope() as session:
        row = session.get(ActionRow, ident)
        assert row is not None
        row.state, row.approved_by, row.approved_at = "awaiting_approval", None, None
    next_morning = FRI_1900_PARIS + dt.timedelta(hours=13)
    with session_scope() as session, pytest.raises(ApprovalError, match="run window"):
        ActionPlanner(clock=lambda: next_morning).approve(session, ident, "alice")


def test_a_failed_stop_is_not_retried_after_its_window(any_database: str) -> None:
    seed(FRI_1900_PARIS - dt.timedelta(days=1))
    plan_at(FRI_1900_PARIS, by="scheduler")
    ident = only_action().id
    with session_scope() as session:
        row = session.get(ActionRow, ident)
        assert row is not None
        row.state = "failed"
    monday = FRI_1900_PARIS + dt.timedelta(days=2, hours=14)
    with pytest.raises(ValueError, match="run window"):
        ActionEngine(pack=pack(), clock=lambda: monday).reapprove(ident, "bob")
    assert only_action().state == "failed"
