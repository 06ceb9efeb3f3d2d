"""Automated rollback triggers on a moto_server: started again, owner objection, alarm."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import inspect, select

from backend.config import get_settings, reset_settings_cache
from backend.core.action_planner import ActionPlanner
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.models import ActionRow
from backend.core.rollback_triggers import (
    CLOUDWATCH_ALARM,
    NEEDED_AGAIN,
    OWNER_OBJECTION,
    RollbackTriggers,
)
from backend.core.types import utcnow
from backend.domain.policy.loader import load_text
from backend.providers.aws.breakers import BreakerKey
from backend.providers.aws.session import AwsClients
from tests.integration.aws_fleet import client
from tests.integration.execution_support import PACK, Account, engine, scan_and_plan, seed

pytestmark = pytest.mark.moto_server


def actions() -> dict[str, ActionRow]:
    with session_scope() as session:
        return {r.resource_id: r for r in session.scalars(select(ActionRow))}


def rollback_events(action_id: int) -> list[dict[str, object]]:
    return [
        {"actor": e.actor, "outcome": e.outcome, **e.details}
        for e in AuditLogger().events("1h", event_types=frozenset({"rollback"}))
        if e.subject_id == str(action_id)
    ]


@pytest.fixture
def account(moto_url: str, any_database: str, monkeypatch: pytest.MonkeyPatch) -> Account:
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "50")
    monkeypatch.delenv("FINOPS_ROLLBACK_WINDOW_DAYS", raising=False)
    reset_settings_cache()
    account = seed(moto_url)
    # a stop and a volume delete, executed live
    scan_and_plan(requested_by="planner")
    with session_scope() as session:
        ActionPlanner().approve(session, actions()[account.loose_volume].id, "alice")
    report = engine().execute(dry_run=False)
    assert sorted(o.result for o in report.outcomes) == ["succeeded", "succeeded"]
    assert account.instance_state(account.idle) == "stopped"
    return account


def alarm(account: Account, name: str) -> None:
    cw = client(account.endpoint, "cloudwatch", "us-east-1")
    cw.put_metric_alarm(
        AlarmName=name,
        MetricName="5XXError",
        Namespace="AWS/ApiGateway",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1.0,
        ComparisonOperator="GreaterThanThreshold",
    )
    cw.set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason="errors after the stop")


def test_started_again_is_recorded_without_calling_aws(account: Account) -> None:
    account.ec2().start_instances(InstanceIds=[account.idle])
    stop = actions()[account.idle]
    results = RollbackTriggers().check()
    assert [(r.action_id, r.trigger, r.result) for r in results] == [
        (stop.id, NEEDED_AGAIN, "rolled_back")
    ]
    rows = actions()
    assert rows[account.idle].state == "rolled_back"
    assert rows[account.loose_volume].state == "succeeded"  # not needed: left alone
    (event,) = rollback_events(stop.id)
    assert event["trigger"] == NEEDED_AGAIN
    assert event["outcome"] == "rolled_back"
    assert event["aws_call"] == "none: already undone"
    assert RollbackTriggers().check() == []  # fires once
    assert AuditLogger().verify().ok


def test_owner_objection_restores_the_volume(account: Account) -> None:
    delete = actions()[account.loose_volume]
    snapshot = delete.backup_ref
    result = RollbackTriggers().object(delete.id, "bob@team-a", "holds last quarter's data")
    assert (result.trigger, result.result, result.fired_by) == (
        OWNER_OBJECTION,
        "rolled_back",
        "bob@team-a",
    )
    restored = [
        v for v in account.ec2().describe_volumes()["Volumes"] if v.get("SnapshotId") == snapshot
    ]
    assert len(restored) == 1
    assert {"Key": "owner", "Value": "team-a"} in restored[0]["Tags"]
    assert actions()[account.loose_volume].state == "rolled_back"
    events = rollback_events(delete.id)
    triggered = [e for e in events if e["outcome"] == "triggered"]
    assert triggered == [
        {
            "actor": "bob@team-a",
            "outcome": "triggered",
            "trigger": OWNER_OBJECTION,
            "fired_by": "bob@team-a",
            "who": "bob@team-a",
            "reason": "holds last quarter's data",
        }
    ]
    assert [e["outcome"] for e in events] == ["triggered", "rolled_back"]
    assert AuditLogger().verify().ok


def test_alarm_rolls_back_the_policy(account: Account) -> None:
    alarm(account, "api-5xx")
    alarm(account, "unrelated")
    stop = actions()[account.idle]
    triggers = RollbackTriggers(alarms={"stop-idle": ["api-5xx"], "other": ["unrelated"]})
    results = triggers.check()
    assert [(r.action_id, r.trigger, r.result, r.fired_by) for r in results] == [
        (stop.id, CLOUDWATCH_ALARM, "rolled_back", "cloudwatch:api-5xx")
    ]
    assert account.instance_state(account.idle) in {"running", "pending"}  # the engine started it
    assert actions()[account.idle].state == "rolled_back"
    assert actions()[account.loose_volume].state == "succeeded"  # another policy
    (event,) = [e for e in rollback_events(stop.id) if e["outcome"] == "triggered"]
    assert event["trigger"] == CLOUDWATCH_ALARM
    assert event["alarm"] == "api-5xx"


def test_an_undo_that_fails_is_its_trigger_s_error_and_the_others_still_count(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alarm's undo fails (AWS refuses): that trigger says so; the restarted instance's
    stop is still recorded as needed again, and check() returns."""
    account.ec2().start_instances(InstanceIds=[account.idle])  # the stop: needed again
    alarm(account, "orders-5xx")  # the volume delete's alarm: its undo will fail
    volume = actions()[account.loose_volume]

    def refused(self: object, action_id: int, actor: str) -> object:
        raise RuntimeError("AWS said no")

    monkeypatch.setattr("backend.core.action_engine.ActionEngine.rollback", refused)
    results = RollbackTriggers(alarms={"delete-unattached": ["orders-5xx"]}).check()
    outcomes = {(r.action_id, r.trigger, r.result) for r in results}
    assert (volume.id, CLOUDWATCH_ALARM, "error") in outcomes
    assert actions()[account.idle].state == "rolled_back"  # recorded, no AWS call needed


def test_outside_the_window_nothing_fires(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    account.ec2().start_instances(InstanceIds=[account.idle])
    alarm(account, "api-5xx")
    later = utcnow() + dt.timedelta(days=8)
    triggers = RollbackTriggers(clock=lambda: later, alarms={"stop-idle": ["api-5xx"]})
    assert triggers.check() == []
    late = triggers.object(actions()[account.loose_volume].id, "bob", "too late")
    assert late.result == "skipped"
    assert {r.state for r in actions().values() if r.state != "blocked"} == {"succeeded"}

    # the window is read from the environment at call time, and per policy
    monkeypatch.setenv("FINOPS_ROLLBACK_WINDOW_DAYS", "10")
    assert [r.trigger for r in triggers.check()] == [NEEDED_AGAIN]
    short = RollbackTriggers(clock=lambda: later, windows={"delete-unattached": 1})
    assert short.object(actions()[account.loose_volume].id, "bob", "x").result == "skipped"


def test_the_policy_yaml_sets_its_window_and_alarms(account: Account) -> None:
    """`rollback: {window-days, alarms}` in the policy, with no CLI mapping."""
    alarm(account, "api-5xx")
    stop = actions()[account.idle]
    text = PACK.replace(
        "    mode: auto\n", "    mode: auto\n    rollback: {window-days: 10, alarms: [api-5xx]}\n"
    )
    yaml_pack = load_text(text, "execution-test.yml")
    assert yaml_pack.by_name["stop-idle"].rollback.alarms == ("api-5xx",)
    later = utcnow() + dt.timedelta(days=8)  # past the default 7 days, inside the policy's 10
    assert RollbackTriggers(clock=lambda: later).check() == []  # default pack: no alarm
    results = RollbackTriggers(clock=lambda: later, pack=yaml_pack).check()
    assert [(r.action_id, r.result, r.fired_by) for r in results] == [
        (stop.id, "rolled_back", "cloudwatch:api-5xx")
    ]
    much_later = utcnow() + dt.timedelta(days=11)
    assert RollbackTriggers(clock=lambda: much_later, pack=yaml_pack).window("stop-idle") == (
        dt.timedelta(days=10)
    )


def stop_elsewhere(resource_id: str, **where: str) -> int:
    """A copy of the stop action of `resource_id` in another place (region or account)."""
    with session_scope() as session:
        stop = session.scalars(select(ActionRow).where(ActionRow.resource_id == resource_id)).one()
        values = {a.key: getattr(stop, a.key) for a in inspect(ActionRow).column_attrs}
        values.pop("id")
        values.update(resource_id="i-0e15e0e15e0e15e0e", idempotency_key="elsewhere", **where)
        row = ActionRow(**values)
        session.add(row)
        session.flush()
        return row.id


@pytest.mark.parametrize("fault", ["breaker", "offboarded"])
def test_one_account_s_error_is_its_candidate_s_and_the_others_still_fire(
    account: Account, fault: str
) -> None:
    """An open breaker (CircuitOpenError) or an account no longer configured
    (WrongAccountError) is that candidate's error, not the end of every account's check."""
    account.ec2().start_instances(InstanceIds=[account.idle])  # the stop: needed again
    stop = actions()[account.idle]
    clients = AwsClients(endpoint_url=get_settings().aws_endpoint_url)
    if fault == "breaker":  # e.g. its role was removed: AccessDenied on every call
        other = stop_elsewhere(account.idle, region="us-west-2")
        for acct in ("self", stop.account_id):
            for _ in range(30):
                key = BreakerKey(acct, "us-west-2", "ec2")
                clients.breakers.record(key, True, error="AccessDenied: role removed")
    else:
        other = stop_elsewhere(account.idle, account_id="210987654321")

    results = {r.action_id: r for r in RollbackTriggers(clients=clients).check()}

    assert (results[stop.id].trigger, results[stop.id].result) == (NEEDED_AGAIN, "rolled_back")
    assert actions()[account.idle].state == "rolled_back"
    failed = results[other]
    assert (failed.trigger, failed.result) == (NEEDED_AGAIN, "error")
    error = "CircuitOpenError" if fault == "breaker" else "WrongAccountError"
    account_id = stop.account_id if fault == "breaker" else "210987654321"
    assert error in failed.detail and f"account {account_id}" in failed.detail
