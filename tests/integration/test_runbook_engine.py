"""AutoRemediationEngine as the runbook calls it, on SQLite and PostgreSQL: what it prints."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from backend.config import reset_settings_cache
from backend.core import migrations
from backend.core.auto_remediation_engine import AutoRemediationEngine
from backend.core.database import DatabaseUnavailableError, session_scope
from backend.core.emergency_stop import EmergencyStop
from backend.core.models import ActionRow
from backend.core.types import utcnow
from tests.integration.execution_support import Account, pack, scan_and_plan, seed


@pytest.fixture
def db(any_database: str) -> str:
    migrations.upgrade()
    return any_database


@pytest.fixture
def account(moto_url: str, any_database: str, monkeypatch: pytest.MonkeyPatch) -> Account:
    # a four-instance account: one action is 25% of the fleet, over the 10% default
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "50")
    reset_settings_cache()
    return seed(moto_url)


def add_action(state: str, resource: str = "i-0abc", **fields: Any) -> int:
    now = utcnow()
    with session_scope() as session:
        row = ActionRow(
            idempotency_key=uuid.uuid4().hex,
            policy_name="stop-idle",
            account_id="111111111111",
            region="us-east-1",
            kind="ec2",
            resource_id=resource,
            action="stop",
            mode="auto",
            state=state,
            created_at=now,
            updated_at=now,
            **fields,
        )
        session.add(row)
        session.flush()
        return row.id


def action_state(action_id: int) -> str:
    with session_scope() as session:
        row = session.get(ActionRow, action_id)
        assert row is not None
        return row.state


def idle_action(account: Account) -> int:
    with session_scope() as session:
        rows = session.query(ActionRow).filter(ActionRow.resource_id == account.idle).all()
        return rows[0].id


def test_status_of_a_quiet_engine(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = AutoRemediationEngine().get_status()
    print(status)
    out = capsys.readouterr().out
    assert status.state == "running"
    assert "automation engine: RUNNING" in out
    assert "never engaged" in out
    assert "in-process (embedded: no separate workers)" in out
    assert "0 approved action(s) due now" in out
    assert "failure rate, 1h:  n/a" in out
    assert "circuit breakers:  not configured" in out
    assert "PROBLEM" not in out


def test_status_counts_backlog_and_failure_rate(db: str) -> None:
    now = utcnow()
    add_action("succeeded", claimed_at=now)
    add_action("failed", claimed_at=now, error="Throttling")
    add_action("failed", claimed_at=now, error="Throttling")
    add_action("approved", approved_at=now - dt.timedelta(minutes=10))
    add_action("approved", not_before=now + dt.timedelta(days=3))
    status = AutoRemediationEngine().get_status()
    text = str(status)
    assert "1 approved action(s) due now, oldest approved 10m ago" in text
    assert "1 waiting for their notice period" in text
    assert status.last_hour == {"approved": 2, "failed": 2, "succeeded": 1}
    assert "67% (2 of 3 executed failed)" in text
    assert status.state.startswith("degraded (failure rate")
    assert "PROBLEM: failure rate: 2 of 3 failed in the last hour" in text


def test_status_with_a_refused_policy_pack_says_degraded(
    db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A refused pack plans and runs nothing: the status must not say RUNNING."""
    (tmp_path / "broken.yml").write_text("policies:\n  - name: x\n    resource: nonsense\n")
    monkeypatch.setenv("FINOPS_POLICY_PATHS", str(tmp_path / "broken.yml"))
    reset_settings_cache()
    status = AutoRemediationEngine().get_status()
    assert status.state == "degraded (policies)", status.problems
    assert "policy pack REFUSED: 1 problem(s)" in str(status)


def test_status_on_a_dead_database_says_degraded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://x@127.0.0.1:1/x")
    reset_settings_cache()
    status = AutoRemediationEngine().get_status()
    assert status.state.startswith("degraded (database")
    assert "UNREADABLE: the engine fails closed" in str(status)
    assert any("Connection refused" in p for p in status.problems)


def test_emergency_stop_lists_what_it_held(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    executing = add_action("executing", "i-0running", claimed_by="worker-1", claimed_at=utcnow())
    approved = add_action("approved", "i-0next")
    failed = add_action("failed", "i-0done")
    result = AutoRemediationEngine().emergency_stop(reason="bad deploy", actor="oncall")
    out = capsys.readouterr().out
    assert "EMERGENCY STOP ENGAGED by oncall" in out and "bad deploy" in out
    assert "2 action(s) held by the stop:" in out
    assert f"#{executing} executing stop 111111111111/us-east-1/ec2/i-0running" in out
    assert "stops before its next AWS call" in out
    assert f"#{approved} approved stop" in out and "will not be claimed" in out
    assert f"#{failed} " not in out
    assert [a["id"] for a in result.held] == [executing, approved]
    assert EmergencyStop().state().engaged
    assert AutoRemediationEngine().get_status().state == "stopped (emergency stop)"

    AutoRemediationEngine().emergency_stop(reason="again", actor="someone-else")
    assert "(already engaged)" in capsys.readouterr().out
    assert EmergencyStop().state().reason == "bad deploy"  # the first reason is kept


def test_emergency_stop_with_no_arguments(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = AutoRemediationEngine().emergency_stop()
    assert result.state.engaged and "@" in (result.state.engaged_by or "")
    out = capsys.readouterr().out
    assert "emergency stop from the runbook" in out
    assert "0 action(s) held by the stop" in out


def test_emergency_stop_that_cannot_be_persisted_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://x@127.0.0.1:1/x")
    reset_settings_cache()
    with pytest.raises(DatabaseUnavailableError, match="emergency stop not persisted"):
        AutoRemediationEngine().emergency_stop(reason="db incident", actor="oncall")
    out = capsys.readouterr().out
    assert "EMERGENCY STOP NOT PERSISTED" in out
    assert "kubectl scale deployment finops-worker --replicas=0" in out


def test_retry_action_names_a_bad_id(db: str) -> None:
    engine = AutoRemediationEngine()
    with pytest.raises(ValueError, match="'ACTION_ID' is not an action id: replace ACTION_ID"):
        engine.retry_action("ACTION_ID")
    with pytest.raises(LookupError, match="no action 999"):
        engine.retry_action("999")
    done = add_action("succeeded")
    with pytest.raises(ValueError, match=f"action {done} is succeeded: only a failed one"):
        engine.retry_action(done)


def test_test_safe_action_without_actions(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    report = AutoRemediationEngine().test_safe_action()
    out = capsys.readouterr().out
    assert report.passed, out
    for step in ("emergency stop", "database", "audit log", "safety self-test", "policy pack"):
        assert f"PASS {step}: " in out
    assert "PASS dry-run: no approved action due; a synthetic stop" in out
    assert "test_safe_action PASSED: 6 ok, 0 failed" in out


def test_test_safe_action_fails_under_the_emergency_stop(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    EmergencyStop().engage("incident 42", "oncall")
    report = AutoRemediationEngine().test_safe_action()
    out = capsys.readouterr().out
    assert not report.passed
    assert "FAIL emergency stop: EMERGENCY STOP ENGAGED by oncall" in out
    assert "test_safe_action FAILED: 5 ok, 1 failed" in out


@pytest.mark.moto_server
def test_test_safe_action_dry_runs_an_approved_action(
    account: Account, capsys: pytest.CaptureFixture[str]
) -> None:
    scan_and_plan()
    action = idle_action(account)
    report = AutoRemediationEngine(pack=pack()).test_safe_action()
    out = capsys.readouterr().out
    assert report.passed, out
    assert f"PASS dry-run: DRY-RUN of action #{action} (stop {account.idle}): would-execute" in out
    assert account.instance_state(account.idle) == "running"
    assert action_state(action) == "approved"


@pytest.mark.moto_server
def test_retry_action_dry_run_then_live(
    account: Account, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    scan_and_plan()
    action = idle_action(account)
    with session_scope() as session:
        failed = {"state": "failed", "error": "Throttling: Rate exceeded"}
        session.execute(update(ActionRow).where(ActionRow.id == action).values(**failed))
    engine = AutoRemediationEngine(pack=pack())

    outcome = engine.retry_action(str(action))  # dry-run by default
    out = capsys.readouterr().out
    assert outcome.result == "would-execute"
    assert "failed with: Throttling: Rate exceeded" in out
    assert "safety, on a fresh describe: allowed" in out
    assert "DRY-RUN: it would be retried" in out
    assert action_state(action) == "failed"
    assert account.instance_state(account.idle) == "running"

    EmergencyStop().engage("incident", "oncall")
    assert engine.retry_action(action, dry_run=False).result == "stopped"
    assert action_state(action) == "failed"
    EmergencyStop().release("admin", is_admin=True)

    monkeypatch.setenv("FINOPS_DRY_RUN", "false")
    reset_settings_cache()
    outcome = engine.retry_action(action, actor="oncall")
    assert outcome.result == "succeeded", outcome
    assert "retried: succeeded" in capsys.readouterr().out
    assert account.instance_state(account.idle) == "stopped"
    assert action_state(action) == "succeeded"


@pytest.mark.moto_server
def test_retry_action_is_judged_again(account: Account, capsys: pytest.CaptureFixture[str]) -> None:
    scan_and_plan()
    action = idle_action(account)
    with session_scope() as session:
        session.execute(update(ActionRow).where(ActionRow.id == action).values(state="failed"))
    account.ec2().create_tags(
        Resources=[account.idle], Tags=[{"Key": "finops:opt-out", "Value": "mine"}]
    )
    outcome = AutoRemediationEngine(pack=pack()).retry_action(action, dry_run=False)
    assert outcome.result == "blocked" and "opt-out" in outcome.detail
    assert "not retried: the action stays failed" in capsys.readouterr().out
    assert action_state(action) == "failed"
    assert account.instance_state(account.idle) == "running"


@pytest.mark.moto_server
def test_run_cycle_scans_plans_and_dry_runs(account: Account) -> None:
    migrations.upgrade()
    engine = AutoRemediationEngine(pack=pack())
    summary = engine.run_cycle(regions=["us-east-1"])
    assert summary.dry_run and summary.scan is not None and summary.plan is not None
    assert summary.run is not None
    assert [o.result for o in summary.run.outcomes] == ["would-execute"]
    assert len(summary.plan.blocked) == 2  # the production and the opted-out instances
    text = str(summary)
    assert "plan: 1 approved, 1 awaiting approval, 2 blocked" in text
    assert "execute (DRY-RUN" in text and "would-execute" in text
    assert account.instance_state(account.idle) == "running"

    EmergencyStop().engage("incident", "oncall")
    stopped = engine.run_cycle(regions=["us-east-1"])
    assert stopped.skipped and "incident" in stopped.skipped
    assert str(stopped).startswith("cycle skipped: EMERGENCY STOP ENGAGED")
