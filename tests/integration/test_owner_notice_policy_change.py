"""A policy changed while its owner's grace period runs: the action obeys the policy as it
is when it would run, not as it was when it was planned (against a moto_server)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select

from backend.config import get_settings
from backend.core.action_engine import ActionEngine
from backend.core.action_planner import ActionPlanner
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import ActionRow
from backend.core.scan_service import ScanService
from backend.domain.policy import load_text
from backend.domain.policy.model import PolicyPack
from tests.integration import test_owner_notice as notice
from tests.integration.aws_fleet import client, launch
from tests.support.peers import SmtpPeer

pytestmark = pytest.mark.moto_server
Clock = notice.Clock
sqlite, smtp = notice.sqlite, notice.smtp  # the same fixtures

PACK = """
policies:
  - name: stop-dev
    resource: ec2
    filters:
      - "State.Name": running
      - "tag:env": dev
    action: stop
    mode: {mode}
    notice: {{notify: true, grace-days: {grace}}}
"""


def pack(mode: str = "auto", grace: int = 3) -> PolicyPack:
    return load_text(PACK.format(mode=mode, grace=grace), "stop-dev.yml")


def instance(url: str) -> str:
    ec2 = client(url, "ec2", "us-east-1")
    return launch(ec2, {"env": "dev", "owner": "bob@example.com"})


def state_of(url: str, iid: str) -> str:
    found = client(url, "ec2", "us-east-1").describe_instances(InstanceIds=[iid])
    return str(found["Reservations"][0]["Instances"][0]["State"]["Name"])


def planned(url: str) -> tuple[str, Clock]:
    """An instance whose auto stop is planned, approved by its policy and its owner told."""
    iid = instance(url)
    upgrade()
    ScanService(get_settings()).run(pack=pack(), regions=["us-east-1"])
    t0 = Clock()
    with session_scope() as session:
        ActionPlanner(clock=t0).plan(session, pack(), requested_by="scheduler", notify_owners=True)
    (row,) = rows()
    assert (row.state, row.approved_by) == ("approved", "policy:stop-dev")
    return iid, t0


def rows() -> list[ActionRow]:
    with session_scope() as session:
        return list(session.scalars(select(ActionRow).order_by(ActionRow.id)))


def test_unchanged_policy_acts_after_the_grace(moto_url: str, sqlite: str, smtp: SmtpPeer) -> None:
    iid, t0 = planned(moto_url)
    report = ActionEngine(pack=pack(), clock=t0.days(3.5)).execute(dry_run=False)
    assert [o.result for o in report.outcomes] == ["succeeded"]
    assert state_of(moto_url, iid) in ("stopping", "stopped")


@pytest.mark.parametrize("mode", ["approval", "report"])
def test_a_policy_no_longer_auto_takes_back_its_approval(
    moto_url: str, sqlite: str, smtp: SmtpPeer, mode: str
) -> None:
    iid, t0 = planned(moto_url)
    changed = pack(mode=mode)  # the operator edited the file during the grace period
    report = ActionEngine(pack=changed, clock=t0.days(3.5)).execute(dry_run=False)
    assert [o.result for o in report.outcomes] == ["blocked"]
    assert f"is now in {mode} mode" in report.outcomes[0].detail
    assert state_of(moto_url, iid) == "running"
    if mode == "approval":
        # planned again under the policy as it is, after that day's scan (the first scan
        # is too old to plan on): a person decides now
        ScanService(get_settings(), now=t0.days(3.6)).run(pack=changed, regions=["us-east-1"])
        with session_scope() as session:
            ActionPlanner(clock=t0.days(3.6)).plan(session, changed, requested_by="scheduler")
        (row,) = rows()
        assert (row.state, row.mode, row.approved_by) == ("awaiting_approval", "approval", None)
        again = ActionEngine(pack=changed, clock=t0.days(3.7)).execute(dry_run=False)
        assert again.outcomes == []
        assert state_of(moto_url, iid) == "running"


def test_a_lengthened_grace_runs_from_the_notice(
    moto_url: str, sqlite: str, smtp: SmtpPeer
) -> None:
    iid, t0 = planned(moto_url)
    report = ActionEngine(pack=pack(grace=10), clock=t0.days(3.5)).execute(dry_run=False)
    assert [o.result for o in report.outcomes] == ["blocked"]
    assert "now gives the owner 10 day(s) from the notice" in report.outcomes[0].detail
    assert state_of(moto_url, iid) == "running"


def test_a_persons_approval_lasts_from_when_the_action_may_run(sqlite: str) -> None:
    upgrade()
    t0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
    not_before = t0 + dt.timedelta(days=7)
    fields: dict[str, Any] = {
        "idempotency_key": "k",
        "policy_name": "p",
        "account_id": "123456789012",
        "region": "us-east-1",
        "kind": "ebs",
        "resource_id": "vol-1",
        "action": "delete",
        "mode": "approval",
        "state": "awaiting_approval",
        "requested_by": "scheduler",
        "not_before": not_before,
    }
    with session_scope() as session:
        session.add(ActionRow(**fields))
    with session_scope() as session:
        row = ActionPlanner(clock=lambda: t0 + dt.timedelta(days=1)).approve(session, 1, "alice")
        ttl = dt.timedelta(hours=get_settings().approval_ttl_hours)
        assert row.approval_expires_at == not_before + ttl
