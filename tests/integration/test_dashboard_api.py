"""The endpoints the dashboard adds (/api/v1/dashboard/...), on SQLite and PostgreSQL: the
monthly cost by kind, account and region; each policy's limits; approval with a comment."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from backend.core.database import session_scope
from backend.core.models import ActionRow, AuditEventRow
from backend.core.types import utcnow
from tests.support.api_client import Api, build_api, is_problem, seed_action, seed_resource

V1 = "/api/v1"


@pytest.fixture
def api(any_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    return build_api(tmp_path, monkeypatch)


def test_costs_sum_present_resources_by_kind_account_and_region(api: Api) -> None:
    assert api.get(f"{V1}/dashboard/costs", user=None).status_code == 401
    empty = api.get(f"{V1}/dashboard/costs").json()
    assert empty["total"] == {"key": "total", "monthly_cost": 0.0, "resources": 0, "unpriced": 0}
    assert empty["by_kind"] == empty["by_account"] == empty["by_region"] == []

    seed_resource(monthly_cost=10.0)
    seed_resource(monthly_cost=2.5, region="eu-west-1")
    seed_resource(kind="rds", account_id="222222222222", monthly_cost=100.0)
    seed_resource(kind="rds", account_id="222222222222", monthly_cost=None, cost_unknown="?")
    seed_resource(monthly_cost=999.0, gone_at=utcnow())  # gone: not counted
    body = api.get(f"{V1}/dashboard/costs").json()
    assert body["currency"] == "USD"
    assert body["total"] == {"key": "total", "monthly_cost": 112.5, "resources": 4, "unpriced": 1}
    assert body["by_kind"] == [
        {"key": "rds", "monthly_cost": 100.0, "resources": 2, "unpriced": 1},
        {"key": "ebs", "monthly_cost": 12.5, "resources": 2, "unpriced": 0},
    ]
    assert [(r["key"], r["monthly_cost"]) for r in body["by_account"]] == [
        ("222222222222", 100.0),
        ("111111111111", 12.5),
    ]
    assert [(r["key"], r["monthly_cost"]) for r in body["by_region"]] == [
        ("us-east-1", 110.0),
        ("eu-west-1", 2.5),
    ]


def test_policy_details_say_what_each_does_and_its_limits(api: Api) -> None:
    body = api.get(f"{V1}/dashboard/policies").json()
    by_name = {p["name"]: p for p in body}
    assert set(by_name) == {"unattached-ebs-delete", "gp2-to-gp3"}
    delete = by_name["unattached-ebs-delete"]
    assert delete["action"] == "delete" and delete["destructive"] is True
    assert delete["options"] == {"backup": True}
    assert delete["action_description"]
    gp3 = by_name["gp2-to-gp3"]
    assert gp3["options"] == {"volume-type": "gp3"} and gp3["reversible"] is True
    assert gp3["max_actions_per_run"] is None and gp3["rollback_window_days"] is None


def test_approve_with_a_comment_keeps_both_or_refuses(api: Api) -> None:
    action = seed_action(requested_by="otto")

    def approve(user: str, comment: str | None = "looks right") -> object:
        path = f"{V1}/dashboard/actions/{action}/approve"
        return api.post(path, user, json={"comment": comment})

    is_problem(approve("otto"), 403, "forbidden")  # an operator may not approve
    own = seed_action(requested_by="april")
    refused = api.post(f"{V1}/dashboard/actions/{own}/approve", "april", json={})
    assert "separation of duties" in is_problem(refused, 403, "separation-of-duties")["detail"]
    is_problem(api.post(f"{V1}/dashboard/actions/999/approve", "april", json={}), 404)

    response = approve("april")
    assert response.status_code == 200, response.text
    assert (response.json()["state"], response.json()["approved_by"]) == ("approved", "april")
    is_problem(approve("abe"), 409, "invalid-state")  # approved already
    with session_scope() as session:
        row = session.get(ActionRow, action)
        assert row is not None and row.state == "approved"
        events = session.scalars(
            select(AuditEventRow)
            .where(AuditEventRow.subject_type == "action", AuditEventRow.subject_id == str(action))
            .order_by(AuditEventRow.id)
        ).all()
    assert [(e.event_type, e.actor, e.outcome) for e in events] == [
        ("approval", "april", "approved"),
        ("approval", "april", "commented"),
    ]
    assert events[-1].details == {"comment": "looks right"}

    blank = seed_action(requested_by="otto")  # no comment: no comment event
    assert api.post(f"{V1}/dashboard/actions/{blank}/approve", "abe", json={}).status_code == 200
    with session_scope() as session:
        outcomes = session.scalars(
            select(AuditEventRow.outcome).where(
                AuditEventRow.subject_type == "action", AuditEventRow.subject_id == str(blank)
            )
        ).all()
    assert outcomes == ["approved"]
    assert api.get(f"{V1}/audit/verify").json()["ok"]
