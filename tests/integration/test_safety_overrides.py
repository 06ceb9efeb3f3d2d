"""Resource- and account-scope overrides are enforced by the safety rules (Rule.EXEMPTED):
at planning, again before execution, in the self-test and the status; through the API too.
An unreadable overrides table blocks (fail closed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from backend.config import reset_settings_cache
from backend.core import migrations
from backend.core.action_planner import ActionPlanner, PlanResult
from backend.core.database import get_engine, session_scope
from backend.core.models import ActionRow, OverrideRow, ResourceRow
from backend.core.repositories import to_resource
from backend.core.safety_checker import SafetyChecker
from backend.core.types import utcnow
from backend.domain.policy import load_text
from backend.domain.safety import Rule
from tests.integration.execution_support import Account, engine, scan_and_plan, seed
from tests.support.api_client import (
    PACK,
    Api,
    build_api,
    is_problem,
    seed_opportunity,
    seed_resource,
)

V1 = "/api/v1"
OTHER_ACCOUNT = "222222222222"


@pytest.fixture
def db(any_database: str) -> str:
    migrations.upgrade()
    return any_database


def add_override(
    scope: str, target: str, *, who: str = "alice", why: str = "owner away", until: dt.datetime
) -> int:
    with session_scope() as session:
        row = OverrideRow(scope=scope, target=target, reason=why, created_by=who, expires_at=until)
        session.add(row)
        session.flush()
        return row.id


def end_override(override_id: int) -> None:
    with session_scope() as session:
        session.execute(
            update(OverrideRow).where(OverrideRow.id == override_id).values(expires_at=utcnow())
        )


def plan() -> PlanResult:
    with session_scope() as session:
        return ActionPlanner().plan(session, load_text(PACK, "pack.yml"), requested_by="planner")


def states() -> dict[str, str]:
    with session_scope() as session:
        return {r.resource_id: r.state for r in session.scalars(select(ActionRow))}


def volume(account: str = "111111111111") -> str:
    pk = seed_resource(account_id=account)
    seed_opportunity(pk)
    with session_scope() as session:
        row = session.get(ResourceRow, pk)
        assert row is not None
        return row.resource_id


# -- at planning ------------------------------------------------------------------------------


def test_planning_blocks_an_exempted_resource_and_account(db: str) -> None:
    exempt, in_other_account, ended, free = volume(), volume(OTHER_ACCOUNT), volume(), volume()
    tomorrow = (utcnow() + dt.timedelta(days=1)).replace(microsecond=0)
    resource_override = add_override("resource", exempt, until=tomorrow)
    add_override("account", OTHER_ACCOUNT, who="bob", why="migration", until=None)
    add_override("resource", ended, until=utcnow() - dt.timedelta(minutes=1))
    add_override("policy", free, until=None)  # a policy-scope row names policies, not resources

    result = plan()
    by_resource = states()
    assert by_resource[exempt] == by_resource[in_other_account] == "blocked"
    assert by_resource[ended] == by_resource[free] == "awaiting_approval"
    reasons = sorted(result.blocked.values())
    assert len(reasons) == 2
    assert any(
        f"exempted: resource {exempt} exempted by override #{resource_override} "
        f"(by alice, until {tomorrow:%Y-%m-%d %H:%M}Z): owner away" in r
        for r in reasons
    ), reasons
    assert any(
        f"exempted: account {OTHER_ACCOUNT} exempted by override" in r
        and "(by bob, until ended): migration" in r
        for r in reasons
    ), reasons

    # Ended: the next plan judges the blocked action again and lets it through.
    end_override(resource_override)
    again = plan()
    assert states()[exempt] == "awaiting_approval"
    assert states()[in_other_account] == "blocked" and len(again.blocked) == 1


def test_unreadable_overrides_fail_closed_at_planning(db: str) -> None:
    exempt = volume()
    plan()
    with get_engine().begin() as connection:
        connection.execute(text("DROP TABLE overrides"))
    with session_scope() as session:
        row = session.scalars(select(ActionRow).where(ActionRow.resource_id == exempt)).one()
        resource = session.scalars(
            select(ResourceRow).where(ResourceRow.resource_id == exempt)
        ).one()
        judgement = SafetyChecker().judge_planned(row, to_resource(resource))
        session.rollback()  # PostgreSQL: the failed read ended the transaction
    assert not judgement.allowed
    assert [v.rule for v in judgement.blocking] == [Rule.FAIL_CLOSED]
    assert "overrides" in judgement.summary()


# -- before execution (moto_server) ------------------------------------------------------------


@pytest.fixture
def account(moto_url: str, any_database: str, monkeypatch: pytest.MonkeyPatch) -> Account:
    # a four-instance account: one action is 25% of the fleet, over the 10% default
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "50")
    reset_settings_cache()
    return seed(moto_url)


def idle_row(account: Account) -> ActionRow:
    with session_scope() as session:
        return session.scalars(select(ActionRow).where(ActionRow.resource_id == account.idle)).one()


@pytest.mark.moto_server
def test_an_override_made_after_approval_blocks_before_execution(account: Account) -> None:
    scan_and_plan()
    approved = idle_row(account)
    assert approved.state == "approved"
    override = add_override("resource", account.idle, until=None)
    dry = engine().execute(dry_run=True)
    assert [o.result for o in dry.outcomes] == ["would-block"]
    assert f"resource {account.idle} exempted by override #{override}" in dry.outcomes[0].detail

    end_override(override)
    add_override("account", approved.account_id, who="carol", why="audit", until=None)
    live = engine().execute(dry_run=False)
    assert [o.result for o in live.outcomes] == ["blocked"]
    assert "exempted: account" in live.outcomes[0].detail and "carol" in live.outcomes[0].detail
    assert account.instance_state(account.idle) == "running"
    assert idle_row(account).state == "blocked"


@pytest.mark.moto_server
def test_unreadable_overrides_fail_closed_before_execution(account: Account) -> None:
    scan_and_plan()
    with get_engine().begin() as connection:
        connection.execute(text("DROP TABLE overrides"))
    report = engine().execute(dry_run=False)
    assert len(report.outcomes) == 1 and report.outcomes[0].result == "held", report
    assert "cannot read whether its policy is held" in report.outcomes[0].detail
    assert account.instance_state(account.idle) == "running"
    assert idle_row(account).state == "approved"  # it waits for a readable database


# -- the runbook's checks ----------------------------------------------------------------------


def test_self_test_and_status_cover_overrides(db: str) -> None:
    report = SafetyChecker().run_full_check()
    names = {name: ok for name, ok, _ in report.results}
    assert report.passed, str(report)
    for case in (
        "a resource override blocks",
        "an account override blocks",
        "an ended override no longer blocks",
    ):
        assert names.get(case) is True, case
    assert "(none active)" in SafetyChecker().system_status().rules["overrides"]
    add_override("account", OTHER_ACCOUNT, until=None)
    status = SafetyChecker().system_status()
    assert status.active, status.problems
    assert f"1 active: account {OTHER_ACCOUNT}" in status.rules["overrides"]
    assert "overrides: an active resource- or account-scope override" in str(status)


# -- through the API ---------------------------------------------------------------------------


@pytest.fixture
def api(any_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    return build_api(tmp_path, monkeypatch)


def test_api_creates_resource_and_account_overrides_that_block(api: Api) -> None:
    exempt = volume()
    body = {"scope": "resource", "target": f"  {exempt} ", "reason": "owner away"}
    created = api.post(f"{V1}/overrides", "otto", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["target"] == exempt and created.json()["active"] is True
    account = api.post(
        f"{V1}/overrides", "otto", json={**body, "scope": "account", "target": OTHER_ACCOUNT}
    )
    assert account.status_code == 201, account.text
    for bad in ({"scope": "account", "target": "prod"}, {"scope": "resource", "target": "i-0no"}):
        refused = api.post(f"{V1}/overrides", "otto", json={**body, **bad})
        assert bad["target"] in is_problem(refused, 422, "invalid-override")["detail"]
    listed = api.get(f"{V1}/overrides", params={"scope": "resource"}).json()
    assert [o["target"] for o in listed["items"]] == [exempt]

    planned = api.post(f"{V1}/actions/plan", "otto").json()
    assert len(planned["blocked"]) == 1
    assert "exempted: resource" in next(iter(planned["blocked"].values()))
    assert states() == {exempt: "blocked"}

    ended = api.call("DELETE", f"{V1}/overrides/{created.json()['id']}", "april")
    assert ended.status_code == 200 and ended.json()["active"] is False
    assert api.post(f"{V1}/actions/plan", "otto").json()["blocked"] == {}
    assert states() == {exempt: "awaiting_approval"}
