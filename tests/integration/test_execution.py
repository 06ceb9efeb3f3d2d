"""Plan, approve, execute and roll back against a moto_server; the safety rules hold."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from backend.config import reset_settings_cache
from backend.core.action_engine import ActionEngine
from backend.core.action_planner import ActionPlanner, ApprovalError
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop, EmergencyStopEngaged
from backend.core.policy_manager import PolicyManager
from backend.core.safety_checker import SafetyChecker
from tests.integration.execution_support import (
    PACK,
    Account,
    actions,
    engine,
    scan_and_plan,
    seed,
)

pytestmark = pytest.mark.moto_server


@pytest.fixture
def account(moto_url: str, any_database: str, monkeypatch: pytest.MonkeyPatch) -> Account:
    # a four-instance account: one action is 25% of the fleet, over the 10% default
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "50")
    reset_settings_cache()
    return seed(moto_url)


def test_protected_and_opted_out_are_blocked_at_planning(account: Account) -> None:
    result = scan_and_plan()
    rows = actions()
    assert rows[account.idle].state == "approved"  # auto, reversible
    assert rows[account.loose_volume].state == "awaiting_approval"  # irreversible: a person
    assert rows[account.prod].state == "blocked"
    assert "protected-tag" in result.blocked[rows[account.prod].id]
    assert rows[account.opted_out].state == "blocked"
    assert "opt-out" in result.blocked[rows[account.opted_out].id]
    assert account.busy not in rows
    assert scan_and_plan().created == []  # planning again adds nothing
    # the safety status lists each block once, with its reason
    recent = SafetyChecker().system_status().recent_failures
    blocked = [str(rows[account.prod].id), str(rows[account.opted_out].id)]
    assert sorted(line.split(" ")[2].rstrip(":") for line in recent) == sorted(blocked), recent
    assert all(line.split(": ", 1)[1] for line in recent)


def test_dry_run_changes_nothing(account: Account) -> None:
    scan_and_plan()
    report = engine().execute(dry_run=True)
    assert [o.result for o in report.outcomes] == ["would-execute"]
    assert account.instance_state(account.idle) == "running"
    assert actions()[account.idle].state == "approved"


def test_execute_then_roll_back(account: Account) -> None:
    scan_and_plan(requested_by="planner")
    volume_action = actions()[account.loose_volume].id
    with session_scope() as session, pytest.raises(ApprovalError, match="separation"):
        ActionPlanner().approve(session, volume_action, "planner")
    with session_scope() as session:
        ActionPlanner().approve(session, volume_action, "alice")
    report = engine().execute(dry_run=False)
    assert sorted(o.result for o in report.outcomes) == ["succeeded", "succeeded"]
    assert account.instance_state(account.idle) == "stopped"
    assert account.instance_state(account.prod) == "running"
    assert not account.volume_exists(account.loose_volume)
    rows = actions()
    snapshot = rows[account.loose_volume].backup_ref
    assert snapshot and snapshot.startswith("snap-")
    assert rows[account.idle].pre_state["state"] == "running"
    assert rows[account.idle].post_state["state"] == "stopped"

    for row in rows.values():
        if row.state == "succeeded":
            assert engine().rollback(row.id, "oncall").result == "rolled_back"
    assert account.instance_state(account.idle) == "running"
    restored = [
        v for v in account.ec2().describe_volumes()["Volumes"] if v.get("SnapshotId") == snapshot
    ]
    assert len(restored) == 1
    assert {"Key": "owner", "Value": "team-a"} in restored[0]["Tags"]
    assert {
        r.state
        for r in actions().values()
        if r.id in {x.id for x in rows.values() if x.state == "succeeded"}
    } == {"rolled_back"}
    events = [e.event_type for e in AuditLogger().events("1h")]
    assert events.count("rollback") == 2
    assert AuditLogger().verify().ok


def test_blast_radius_stops_the_whole_batch(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan_and_plan()
    monkeypatch.setenv("FINOPS_MAX_ACTIONS_PER_RUN", "0")
    reset_settings_cache()
    report = engine().execute(dry_run=False)
    assert report.stopped_by and "limit 0" in report.stopped_by
    assert report.outcomes == []
    assert account.instance_state(account.idle) == "running"


def test_emergency_stop_prevents_any_start(account: Account) -> None:
    scan_and_plan()
    EmergencyStop().engage("test", "oncall")
    report = engine().execute(dry_run=False)
    assert report.stopped_by and "test" in report.stopped_by
    assert account.instance_state(account.idle) == "running"
    assert actions()[account.idle].state == "approved"


def test_a_resource_that_changed_is_blocked_before_execution(account: Account) -> None:
    scan_and_plan()
    account.ec2().create_tags(
        Resources=[account.idle], Tags=[{"Key": "finops:opt-out", "Value": "now"}]
    )
    report = engine().execute(dry_run=False)
    assert [o.result for o in report.outcomes] == ["blocked"]
    assert "opt-out" in report.outcomes[0].detail
    assert account.instance_state(account.idle) == "running"


class StopEngagedAfter(EmergencyStop):
    """Engages the stop the moment the named AWS call has been let through, as if an SRE
    pressed the button while that call was in flight. (The race tests cover a stop during
    the change itself: the change finishes, is verified and recorded.)"""

    def __init__(self, call: str) -> None:
        super().__init__()
        self.call = call
        self.refused: list[str] = []

    def check(self, step: str = "") -> None:
        try:
            super().check(step)
        except EmergencyStopEngaged:
            self.refused.append(step)
            raise
        if step == self.call:
            self.engage("pressed mid-action", "oncall")


def test_emergency_stop_during_the_fresh_describe_hands_the_action_back(
    account: Account,
) -> None:
    """The stop is checked before reads too: the pre-checks' next describe is refused."""
    scan_and_plan()
    emergency = StopEngagedAfter("ec2:describe_instances")
    report = engine(emergency=emergency).execute([actions()[account.idle].id], dry_run=False)
    assert [o.result for o in report.outcomes] == ["stopped"]
    # the next read (the dependency check) is refused, and nothing changed: the action is
    # handed back approved, to run after the resume (not blocked: no rule said no)
    assert emergency.refused == ["autoscaling:describe_auto_scaling_instances"]
    assert actions()[account.idle].state == "approved"
    assert account.instance_state(account.idle) == "running"


def test_a_paused_policy_holds_its_approved_actions_until_resumed(
    account: Account, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Paused after approval: its actions stay approved and wait; resumed, they run once."""
    pack_file = tmp_path / "pack.yml"
    pack_file.write_text(PACK)
    monkeypatch.setenv("FINOPS_POLICY_PATHS", str(pack_file))
    reset_settings_cache()
    scan_and_plan()
    stop = actions()[account.idle]
    assert stop.state == "approved"
    until = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    PolicyManager().pause("stop-idle", until, "oncall", "investigating an incident")
    held = ActionEngine().execute(dry_run=False)  # no pack given: the effective one
    assert stop.id not in [o.action_id for o in held.outcomes]
    assert actions()[account.idle].state == "approved"
    assert account.instance_state(account.idle) == "running"
    PolicyManager().resume("stop-idle", "oncall")
    ran = ActionEngine().execute([stop.id], dry_run=False)
    assert [(o.action_id, o.result) for o in ran.outcomes] == [(stop.id, "succeeded")]
