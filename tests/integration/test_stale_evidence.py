"""Stale inventory fails closed (safety invariant 1): an account whose scans keep failing
keeps its old rows and its opportunities open as undecided; neither the plan nor the
execution may act on utilisation or an inventory older than FINOPS_MAX_INVENTORY_AGE_HOURS."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from backend.config import get_settings, reset_settings_cache
from backend.core.action_planner import ActionPlanner, PlanResult
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.scan_service import ScanService
from backend.core.types import utcnow
from backend.providers.aws.session import AccountTarget, AwsClients
from tests.integration.execution_support import Account, actions, engine, pack, seed

pytestmark = pytest.mark.moto_server


class CloudWatchDenied(AwsClients):
    """The account's CloudWatch refuses every call; its describes still work."""

    def client(self, target: AccountTarget, service: str, region: str) -> Any:
        if service == "cloudwatch":
            raise PermissionError("AccessDenied: cloudwatch:GetMetricData denied")
        return super().client(target, service, region)


@pytest.fixture
def account(moto_url: str, any_database: str, monkeypatch: pytest.MonkeyPatch) -> Account:
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "50")
    # Approvals outlive the waits below: only the evidence's age is under test.
    monkeypatch.setenv("FINOPS_APPROVAL_TTL_HOURS", "1000")
    reset_settings_cache()
    found = seed(moto_url)
    upgrade()
    return found


def scan(at: dt.datetime, clients: AwsClients | None = None) -> None:
    ScanService(get_settings(), now=lambda: at, clients=clients).run(
        pack=pack(), regions=["us-east-1"]
    )


def plan(at: dt.datetime) -> PlanResult:
    with session_scope() as session:
        return ActionPlanner(clock=lambda: at).plan(session, pack(), requested_by="planner")


def test_utilisation_from_before_the_failing_scans_blocks_the_plan(account: Account) -> None:
    t0 = utcnow()
    scan(t0)  # idle at first
    t30 = t0 + dt.timedelta(days=30)
    scan(t30, CloudWatchDenied(endpoint_url=get_settings().aws_endpoint_url))
    result = plan(t30)
    stop = actions()[account.idle]
    assert stop.state == "blocked" and result.approved == []
    reason = result.blocked[stop.id]
    assert reason.startswith("fresh-data: stale inventory")
    assert f"metric CPUUtilization Average 14d of {account.idle} is 30d 0h old" in reason
    assert "beyond the 24h bound" in reason
    assert engine(clock=lambda: t30).execute(dry_run=False).outcomes == []
    assert account.instance_state(account.idle) == "running"


def test_an_inventory_no_scan_has_renewed_blocks_the_plan(account: Account) -> None:
    t0 = utcnow()
    scan(t0)  # later scans of the account fail before they describe anything
    result = plan(t0 + dt.timedelta(hours=25))
    rows = actions()
    for resource in (account.idle, account.loose_volume):
        assert rows[resource].state == "blocked"
        assert f"inventory of {resource} is 25h old" in result.blocked[rows[resource].id]


def test_evidence_within_the_bound_plans_as_before(account: Account) -> None:
    t0 = utcnow()
    scan(t0)
    result = plan(t0 + dt.timedelta(hours=23))
    rows = actions()
    assert not [why for why in result.blocked.values() if "fresh-data" in why]
    assert rows[account.idle].state == "approved"
    assert rows[account.loose_volume].state == "awaiting_approval"


def test_evidence_gone_stale_after_the_plan_blocks_execution(account: Account) -> None:
    t0 = utcnow()
    scan(t0)
    plan(t0)
    stop = actions()[account.idle]
    assert stop.state == "approved"
    soon = engine(clock=lambda: t0 + dt.timedelta(hours=23)).execute(dry_run=True)
    assert [o.result for o in soon.outcomes] == ["would-execute"]
    late = t0 + dt.timedelta(hours=30)  # no scan has succeeded since the plan
    report = engine(clock=lambda: late).execute(dry_run=False)
    (outcome,) = report.outcomes
    assert outcome.result == "blocked"
    assert "fresh-data: stale inventory" in outcome.detail
    assert f"metric CPUUtilization Average 14d of {account.idle} is 30h old" in outcome.detail
    assert account.instance_state(account.idle) == "running"
    assert actions()[account.idle].state == "blocked"
