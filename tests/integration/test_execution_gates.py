"""The gates an action passes between approval and the AWS call, each held on every path:
an expired approval, a policy paused or disabled in the database, a tag added while the
backup was taken, the hourly limit across runs, and a rollback of what never changed."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest

from backend.config import get_settings, reset_settings_cache
from backend.core.action_engine import ActionEngine
from backend.core.action_planner import ActionPlanner
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop
from backend.core.migrations import upgrade
from backend.core.policy_manager import PolicyManager
from backend.core.scan_service import ScanService
from backend.domain.policy import load_text
from backend.providers.aws import operations_ec2, operations_storage
from tests.integration.execution_fleet import Fleet, seed_fleet
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
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "50")
    reset_settings_cache()
    return seed(moto_url)


def test_an_expired_approval_is_not_claimed_even_by_id(account: Account) -> None:
    """A worker's task (execute_one by id) may arrive after the approval expired: the claim
    asks whether the action is due, as the run that admitted it did."""
    scan_and_plan(requested_by="planner")
    rows = actions()
    stop, delete = rows[account.idle], rows[account.loose_volume]
    with session_scope() as session:
        ActionPlanner().approve(session, delete.id, "alice")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)  # past every approval's expiry
    late = engine(clock=lambda: later)
    assert late.start_run(dry_run=False).batch == []
    for action_id in (stop.id, delete.id):
        outcome = late.execute_one(action_id, None, dry_run=False)
        assert outcome.result == "skipped", outcome
        assert "approval expired" in outcome.detail
    assert account.instance_state(account.idle) == "running"
    assert account.volume_exists(account.loose_volume)
    assert {actions()[r].state for r in (account.idle, account.loose_volume)} == {"approved"}
    # within the approval, the same call runs it
    assert engine().execute_one(stop.id, None, dry_run=False).result == "succeeded"


def test_a_policy_paused_after_the_run_read_its_pack_holds_the_rest(
    account: Account, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The engine was handed its pack before the pause (a cycle in progress, a file's pack):
    each action asks the database before it is claimed, and waits, still approved."""
    (tmp_path / "pack.yml").write_text(PACK)
    monkeypatch.setenv("FINOPS_POLICY_PATHS", str(tmp_path / "pack.yml"))
    reset_settings_cache()
    scan_and_plan()
    stop = actions()[account.idle]
    stale = engine()  # its pack: the files', enabled
    PolicyManager().pause(
        "stop-idle", dt.datetime.now(dt.UTC) + dt.timedelta(hours=1), "oncall", "INC-1"
    )
    held = stale.execute_one(stop.id, None, dry_run=False)
    assert held.result == "held" and "paused until" in held.detail, held
    assert actions()[account.idle].state == "approved"
    assert account.instance_state(account.idle) == "running"
    PolicyManager().resume("stop-idle", "oncall")
    assert stale.execute_one(stop.id, None, dry_run=False).result == "succeeded"


@pytest.mark.parametrize("tag", [("finops:opt-out", "yes"), ("Env", "prod")])
def test_a_tag_added_while_the_backup_was_taken_stops_the_delete(
    account: Account, monkeypatch: pytest.MonkeyPatch, tag: tuple[str, str]
) -> None:
    """The snapshot takes minutes; the owner tags the volume meanwhile: judged again just
    before the delete, the action is blocked and the snapshot kept."""
    scan_and_plan(requested_by="planner")
    delete = actions()[account.loose_volume]
    with session_scope() as session:
        ActionPlanner().approve(session, delete.id, "alice")
    snapshot = operations_storage.DeleteVolume.backup

    def owner_tags_during_the_backup(self: Any, ctx: Any, resource: Any) -> str | None:
        account.ec2().create_tags(
            Resources=[resource.resource_id], Tags=[{"Key": tag[0], "Value": tag[1]}]
        )
        return snapshot(self, ctx, resource)

    monkeypatch.setattr(operations_storage.DeleteVolume, "backup", owner_tags_during_the_backup)
    outcome = engine().execute_one(delete.id, None, dry_run=False)
    assert outcome.result == "blocked", outcome
    assert "after the backup" in outcome.detail and "is kept" in outcome.detail
    assert account.volume_exists(account.loose_volume)
    row = actions()[account.loose_volume]
    assert row.state == "blocked" and row.backup_ref
    snapshots = account.ec2().describe_snapshots(SnapshotIds=[row.backup_ref])["Snapshots"]
    assert [s["VolumeId"] for s in snapshots] == [account.loose_volume]


TERMINATE = """
policies:
  - name: terminate-idle
    resource: ec2
    filters:
      - "State.Name": running
      - {type: metrics, name: CPUUtilization, statistic: Average, days: 14, op: lt, value: 5}
    action: terminate
    mode: approval
"""


def _running(account: Account) -> list[str]:
    reservations = account.ec2().describe_instances()["Reservations"]
    up = ("pending", "running")
    return sorted(
        i["InstanceId"] for r in reservations for i in r["Instances"] if i["State"]["Name"] in up
    )


def test_rolling_back_a_terminate_that_never_happened_launches_nothing(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop came between the image and the terminate: the action failed with its backup
    kept. Its rollback finds the instance still there and launches no second copy."""
    pack = load_text(TERMINATE, "terminate.yml")
    upgrade()
    ScanService(get_settings()).run(pack=pack, regions=["us-east-1"])
    with session_scope() as session:
        ActionPlanner().plan(session, pack, requested_by="planner")
    terminate = actions()[account.idle]
    with session_scope() as session:
        ActionPlanner().approve(session, terminate.id, "alice")
    image = operations_ec2.TerminateInstance.backup

    def stop_after_the_image(self: Any, ctx: Any, resource: Any) -> str | None:
        made = image(self, ctx, resource)
        EmergencyStop().engage("operator: something looks wrong", "oncall")
        return made

    monkeypatch.setattr(operations_ec2.TerminateInstance, "backup", stop_after_the_image)
    failed = ActionEngine(pack=pack).execute_one(terminate.id, None, dry_run=False)
    assert failed.result != "succeeded", failed
    assert account.instance_state(account.idle) == "running"
    before = _running(account)
    EmergencyStop().release("admin", is_admin=True)
    undone = ActionEngine(pack=pack).rollback(terminate.id, "oncall")
    assert "nothing to restore" in undone.detail, undone
    assert _running(account) == before


@pytest.fixture
def fleet(moto_url: str, any_database: str, monkeypatch: pytest.MonkeyPatch) -> Fleet:
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "100")
    monkeypatch.setenv("FINOPS_MAX_ACTIONS_PER_HOUR", "2")
    reset_settings_cache()
    return seed_fleet(moto_url, idle=4)


def _stopped(fleet: Fleet) -> list[str]:
    return [i for i in fleet.idle_ids if fleet.instance_state(i) in ("stopped", "stopping")]


def test_the_hourly_limit_counts_what_earlier_runs_admitted_and_no_worker_ran_yet(
    fleet: Fleet,
) -> None:
    """Dispatch ticks admit runs before the workers claim their actions: the second tick
    sees the first one's actions waiting and is stopped."""
    scan_and_plan()
    ids = sorted(actions()[i].id for i in fleet.idle_ids)
    first = engine().start_run(ids[:2], dry_run=False)
    assert first.batch == ids[:2] and not first.stopped_by
    second = engine().start_run(ids[2:], dry_run=False)
    assert second.batch == [] and "hour" in str(second.stopped_by), second
    for action_id in first.batch:
        assert engine().execute_one(action_id, first.run_id, dry_run=False).result == "succeeded"
    assert len(_stopped(fleet)) == 2
    # a dry run is judged by the same limit: the hour is full
    assert engine().start_run(ids[2:], dry_run=True).stopped_by is not None
    again = engine().start_run(ids[:2], dry_run=False)  # already run: nothing due
    assert again.batch == []


def test_runs_starting_at_once_do_not_both_pass_the_hourly_limit(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `apply --live` at the same instant (on SQLite too): each judges its blast radius
    counting what the other admitted, so together they admit no more than the hour allows."""
    scan_and_plan()
    ids = sorted(actions()[i].id for i in fleet.idle_ids)
    judge = ActionEngine._blast_radius
    both_read = threading.Barrier(2, timeout=5)

    def slow_judge(self: ActionEngine, *args: Any) -> Any:
        # Without the lock, each has read before either admits; with it, the other waits
        # for our commit and the barrier breaks: serialised, as it should be.
        with contextlib.suppress(threading.BrokenBarrierError):
            both_read.wait()
        return judge(self, *args)

    monkeypatch.setattr(ActionEngine, "_blast_radius", slow_judge)
    reports: list[Any] = []
    runs = [
        threading.Thread(
            target=lambda part=part: reports.append(engine().start_run(part, dry_run=False))
        )
        for part in (ids[:2], ids[2:])
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join()

    admitted = [a for report in reports for a in report.batch]
    assert len(admitted) == 2, reports  # FINOPS_MAX_ACTIONS_PER_HOUR
    assert sum(1 for report in reports if "hour" in str(report.stopped_by)) == 1


def test_a_rolled_back_action_still_counts_in_its_hour(fleet: Fleet) -> None:
    scan_and_plan()
    a, b, c = sorted(actions()[i].id for i in fleet.idle_ids)[:3]
    assert [o.result for o in engine().execute([a, b], dry_run=False).outcomes] == [
        "succeeded",
        "succeeded",
    ]
    assert engine().rollback(a, "owner").result == "rolled_back"
    refused = engine().execute([c], dry_run=False)
    assert refused.outcomes == [] and "hour" in str(refused.stopped_by), refused
    assert fleet.instance_state(fleet.idle_ids[2]) == "running"


OFFHOURS = """
policies:
  - name: offhours
    resource: ec2
    filters:
      - "State.Name": running
      - "tag:env": dev
    action: stop
    mode: auto
    schedule: {cron: "0 19 * * *", timezone: UTC}
"""


def test_an_off_hours_stop_stops_again_each_evening(account: Account) -> None:
    """The owner starts the instance in the morning; the next evening's run stops it again
    (one action per scheduled run, not one per opportunity for ever)."""
    pack = load_text(OFFHOURS, "offhours.yml")
    upgrade()
    # The last evening run at or before now: the next one is then less than a day after the
    # scans this test makes, as the freshness rule wants (after midnight UTC, "today at
    # 19:05" put the second evening 43 hours after its scan: stale evidence, blocked).
    now = dt.datetime.now(dt.UTC)
    today = now.replace(hour=19, minute=5, second=0, microsecond=0)
    if today > now:
        today -= dt.timedelta(days=1)

    def evening(at: dt.datetime) -> list[str]:
        ScanService(get_settings()).run(pack=pack, regions=["us-east-1"])
        with session_scope() as session:
            ActionPlanner(clock=lambda: at).plan(session, pack, requested_by="scheduler")
        # the run at the evening's time too: its actions may run only in the run window
        ran = ActionEngine(pack=pack, clock=lambda: at).execute(dry_run=False)
        return [o.result for o in ran.outcomes]

    assert "succeeded" in evening(today)
    assert account.instance_state(account.idle) == "stopped"
    account.ec2().start_instances(InstanceIds=[account.idle])  # the next morning
    assert "succeeded" in evening(today + dt.timedelta(days=1))
    assert account.instance_state(account.idle) == "stopped"
    assert evening(today + dt.timedelta(days=1, minutes=20)) == []  # same evening: nothing new
