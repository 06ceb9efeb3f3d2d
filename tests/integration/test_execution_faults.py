"""AWS errors at each step of an action, through a fault proxy in front of moto_server.

Every step fails safe and says what happened: an error before the backup blocks (fail
closed, nothing changed); an error taking the backup fails before anything is destroyed; an
error on the destructive call keeps the backup; an error reading the post-state after the
change keeps the backup and the record must say the change was made. Whatever happens, the
audit chain verifies and each action that got as far as AWS has a pre-state and its events.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from backend.config import reset_settings_cache
from backend.core.action_engine import RunReport
from backend.core.action_planner import ActionPlanner
from backend.core.audit_chain import AuditEvent
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.models import ActionRow
from tests.integration.execution_fleet import Fleet, seed_fleet
from tests.integration.execution_support import Account, engine, scan_and_plan
from tests.support.fault_proxy import Fault
from tests.support.staged_fault_proxy import StagedFaultProxy

pytestmark = pytest.mark.moto_server


@dataclass
class World:
    account: Fleet
    proxy: StagedFaultProxy
    volume_action: int
    stop_action: int
    more_stop_actions: list[int]  # the other idle instances' stops


@pytest.fixture
def world(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[World]:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'faults.sqlite'}")
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "100")
    reset_settings_cache()
    account = seed_fleet(moto_url, idle=4)
    scan_and_plan(requested_by="planner")  # straight to moto: the faults are for execution
    rows = action_rows()
    volume_action = rows[account.loose_volume].id
    with session_scope() as session:
        ActionPlanner().approve(session, volume_action, "alice")
    proxy = StagedFaultProxy(upstream=moto_url).start()
    assert isinstance(proxy, StagedFaultProxy)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    reset_settings_cache()
    stops = [rows[iid].id for iid in account.idle_ids]
    yield World(account, proxy, volume_action, stops[0], stops[1:])
    proxy.stop()


def action_rows() -> dict[str, ActionRow]:
    with session_scope() as session:
        return {r.resource_id: r for r in session.scalars(select(ActionRow))}


def row_of(action_id: int) -> ActionRow:
    with session_scope() as session:
        row = session.get(ActionRow, action_id)
        assert row is not None
        return row


def events_of(action_id: int) -> list[AuditEvent]:
    return [
        e
        for e in AuditLogger().events("1h")
        if e.subject_type == "action" and e.subject_id == str(action_id)
    ]


def run(action_id: int) -> RunReport:
    report = engine().execute([action_id], dry_run=False, triggered_by="test")
    assert report.stopped_by is None, report.stopped_by
    assert [o.action_id for o in report.outcomes] == [action_id]
    return report


def snapshots_of(account: Account, volume_id: str) -> list[str]:
    found = account.ec2().describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:finops:source-volume", "Values": [volume_id]}]
    )["Snapshots"]
    return sorted(s["SnapshotId"] for s in found)


def assert_records_hold() -> None:
    """The chain verifies; each action that reached AWS has a pre-state and its events."""
    assert AuditLogger().verify().ok
    for row in action_rows().values():
        if row.attempts == 0:
            continue
        outcomes = [e.outcome for e in events_of(row.id)]
        assert "claimed" in outcomes, (row.id, outcomes)
        assert row.state in outcomes, (row.id, row.state, outcomes)  # its last transition
        if row.state in ("succeeded", "failed", "rolled_back"):
            assert row.pre_state, (row.id, row.state)
            assert "pre-state recorded" in outcomes, (row.id, outcomes)


def failure_event(action_id: int) -> AuditEvent:
    failed = [e for e in events_of(action_id) if e.outcome == "failed"]
    assert len(failed) == 1
    return failed[0]


def says_the_change_was_made(row: ActionRow) -> bool:
    """Whether the record (the row or its events after the backup) says AWS was changed."""
    events = events_of(row.id)
    after_backup = events[[e.outcome for e in events].index("backup taken") + 1 :]
    words = ("changed", "change made", "executed", "deleted", "stopped", "verif")
    for event in after_backup:
        if event.details.get("changed") is True:
            return True
        if event.outcome not in ("failed",) and any(w in event.outcome for w in words):
            return True
    return any(w in (row.error or "").lower() for w in words)


# --- (a) an error while gathering facts before the backup: blocked, nothing changed --------


def test_an_error_on_the_fresh_describe_blocks_the_delete(world: World) -> None:
    fault = Fault(action="DescribeVolumes", kind="unavailable")
    world.proxy.faults.append(fault)
    report = run(world.volume_action)
    assert report.outcomes[0].result == "blocked"
    assert "fail-closed" in report.outcomes[0].detail
    assert fault.hits >= 1
    row = row_of(world.volume_action)
    assert row.state == "blocked"
    assert row.pre_state is None and row.backup_ref is None
    assert row.safety_verdict["allowed"] is False
    assert world.account.volume_exists(world.account.loose_volume)
    assert snapshots_of(world.account, world.account.loose_volume) == []
    assert_records_hold()


def test_an_error_gathering_instance_facts_blocks_the_stop(world: World) -> None:
    probes = [
        Fault(action="DescribeInstances", kind="unavailable"),  # the fresh describe
        Fault(service="autoscaling", kind="access-denied"),  # the Auto Scaling probe
        Fault(action="DescribeInstanceAttribute", kind="access-denied"),  # stop protection
        Fault(service="elasticloadbalancing", kind="drop"),  # target groups
    ]
    actions = [world.stop_action, *world.more_stop_actions]
    assert len(actions) == len(probes)
    for action_id, fault, iid in zip(actions, probes, world.account.idle_ids, strict=True):
        world.proxy.faults[:] = [fault]
        report = run(action_id)
        assert report.outcomes[0].result == "blocked", (fault, report.outcomes[0])
        assert "fail-closed" in report.outcomes[0].detail, fault
        assert fault.hits >= 1, fault
        row = row_of(action_id)
        assert row.state == "blocked" and row.pre_state is None
        assert world.account.instance_state(iid) == "running"
    assert_records_hold()


# --- (b) an error taking the backup: failed before anything is destroyed ------------------


def test_an_error_on_create_snapshot_fails_before_the_delete(world: World) -> None:
    fault = Fault(action="CreateSnapshot", kind="unavailable")
    world.proxy.faults.append(fault)
    report = run(world.volume_action)
    assert report.outcomes[0].result == "failed"
    assert fault.hits >= 1
    row = row_of(world.volume_action)
    assert row.state == "failed"
    assert row.backup_ref is None
    assert row.error and "ServiceUnavailable" in row.error
    assert row.pre_state and row.pre_state["resource_id"] == world.account.loose_volume
    assert world.account.volume_exists(world.account.loose_volume)
    assert snapshots_of(world.account, world.account.loose_volume) == []
    assert "ServiceUnavailable" in failure_event(row.id).details["error"]
    assert "backup taken" not in [e.outcome for e in events_of(row.id)]
    assert_records_hold()


# --- (c) an error on the destructive call: failed, backup kept and recorded ----------------


def test_an_error_on_delete_volume_keeps_the_snapshot(world: World) -> None:
    fault = Fault(action="DeleteVolume", kind="unavailable")  # always: retries do not help
    world.proxy.faults.append(fault)
    report = run(world.volume_action)
    assert report.outcomes[0].result == "failed"
    assert fault.hits >= 2  # the retry layer tried again
    row = row_of(world.volume_action)
    assert row.state == "failed"
    assert row.backup_ref and row.backup_ref.startswith("snap-")
    assert snapshots_of(world.account, world.account.loose_volume) == [row.backup_ref]
    assert world.account.volume_exists(world.account.loose_volume)
    assert row.error and "ServiceUnavailable" in row.error
    assert failure_event(row.id).details["backup"] == row.backup_ref
    assert not says_the_change_was_made(row)  # it was not: the delete never reached AWS
    assert_records_hold()

    # the failure is retried through every check: the same snapshot, then the delete
    world.proxy.faults.clear()
    outcome = engine().retry(world.volume_action, "oncall")
    assert outcome.result == "succeeded", outcome
    assert not world.account.volume_exists(world.account.loose_volume)
    assert snapshots_of(world.account, world.account.loose_volume) == [row.backup_ref]
    assert row_of(world.volume_action).backup_ref == row.backup_ref
    assert_records_hold()


def test_an_error_on_stop_instances_leaves_it_running(world: World) -> None:
    fault = Fault(action="StopInstances", kind="unavailable")
    world.proxy.faults.append(fault)
    report = run(world.stop_action)
    assert report.outcomes[0].result == "failed"
    row = row_of(world.stop_action)
    assert row.state == "failed" and row.error and "ServiceUnavailable" in row.error
    assert row.pre_state and row.pre_state["state"] == "running"
    assert world.account.instance_state(world.account.idle) == "running"
    assert_records_hold()


# --- a lost answer: the snapshot was made, the reply never came; no second snapshot --------


def test_a_lost_create_snapshot_answer_does_not_make_a_second_snapshot(world: World) -> None:
    """Invariant 8: the create reached AWS, its answer was lost. CreateSnapshot takes no
    ClientToken, so only not sending it again (and finding it by tag on the retry) keeps
    it at one snapshot. Our retry policy says creates are retried only when throttled."""
    world.proxy.lose_answer_of = "CreateSnapshot"
    report = run(world.volume_action)
    assert world.proxy.lost == 1
    made = snapshots_of(world.account, world.account.loose_volume)
    assert world.proxy.sent["CreateSnapshot"] == 1, (
        f"CreateSnapshot sent {world.proxy.sent['CreateSnapshot']} times after its answer "
        f"was lost; snapshots now: {made}; outcome: {report.outcomes[0]}"
    )
    assert len(made) == 1
    assert report.outcomes[0].result == "failed"
    assert world.account.volume_exists(world.account.loose_volume)
    outcome = engine().retry(world.volume_action, "oncall")
    assert outcome.result == "succeeded", outcome
    assert snapshots_of(world.account, world.account.loose_volume) == made
    assert row_of(world.volume_action).backup_ref == made[0]
    assert not world.account.volume_exists(world.account.loose_volume)
    assert_records_hold()


# --- (d) an error reading the post-state after the change ----------------------------------


def test_an_error_verifying_the_delete_keeps_the_backup_and_says_it_was_deleted(
    world: World,
) -> None:
    world.proxy.after = "DeleteVolume"
    world.proxy.staged.append(Fault(action="DescribeVolumes", kind="unavailable"))
    report = run(world.volume_action)
    assert world.proxy.armed and world.proxy.staged[0].hits >= 1
    assert report.outcomes[0].result == "failed"
    row = row_of(world.volume_action)
    assert row.state == "failed"
    assert row.backup_ref and row.backup_ref.startswith("snap-")
    assert snapshots_of(world.account, world.account.loose_volume) == [row.backup_ref]
    assert not world.account.volume_exists(world.account.loose_volume)  # the change happened
    assert row.pre_state and row.pre_state["state"] == "available"
    assert_records_hold()
    said = says_the_change_was_made(row)
    record = (row.error, [(e.outcome, e.details) for e in events_of(row.id)][-3:])

    # the backup is what makes it safe: the failed action rolls back from it
    world.proxy.staged.clear()
    outcome = engine().rollback(world.volume_action, "oncall")
    assert outcome.result == "rolled_back", outcome
    restored = [
        v
        for v in world.account.ec2().describe_volumes()["Volumes"]
        if v.get("SnapshotId") == row.backup_ref
    ]
    assert len(restored) == 1
    assert_records_hold()

    # the record must say how far it got: the volume was deleted, only the check failed
    assert said, record


def test_an_error_verifying_the_stop_says_it_was_stopped(world: World) -> None:
    world.proxy.after = "StopInstances"
    world.proxy.staged.append(Fault(action="DescribeInstances", kind="unavailable"))
    report = run(world.stop_action)
    assert world.proxy.armed and world.proxy.staged[0].hits >= 1
    assert report.outcomes[0].result == "failed"
    row = row_of(world.stop_action)
    assert row.state == "failed"
    assert world.account.instance_state(world.account.idle) in ("stopping", "stopped")
    assert_records_hold()
    assert says_the_change_was_made(row), (row.error, [e.outcome for e in events_of(row.id)])
