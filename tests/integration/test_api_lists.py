"""Lists through the HTTP API on SQLite and PostgreSQL: pagination, sorting and filters
give the right rows; bad input is a problem document; savings add up."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.models import ActionRunRow
from backend.core.types import utcnow
from tests.support.api_client import (
    Api,
    build_api,
    is_problem,
    seed_action,
    seed_opportunity,
    seed_resource,
)

V1 = "/api/v1"


@pytest.fixture
def api(any_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    return build_api(tmp_path, monkeypatch)


def all_pages(api: Api, path: str, limit: int, **params: Any) -> tuple[list[Any], set[int]]:
    """Every item, page by page, and the totals each page reported."""
    items: list[Any] = []
    totals: set[int] = set()
    offset = 0
    while True:
        page = api.get(path, params={**params, "limit": limit, "offset": offset}).json()
        assert len(page["items"]) <= limit
        items += page["items"]
        totals.add(page["total"])
        offset += limit
        if offset >= page["total"]:
            return items, totals


def test_actions_pages_sorts_and_filters(api: Api) -> None:
    savings = [5.0, 50.0, None, 20.0, 1.0, 20.0, 7.5]
    states = ["awaiting_approval", "approved", "failed", "approved", "blocked", "failed", "failed"]
    ids = [
        seed_action(
            state=state,
            estimated_monthly_savings=saved,
            policy_name="gp2-to-gp3" if i % 2 else "unattached-ebs-delete",
        )
        for i, (state, saved) in enumerate(zip(states, savings, strict=True))
    ]
    items, totals = all_pages(api, f"{V1}/actions", 3, sort="id")
    assert [a["id"] for a in items] == ids and totals == {7}

    desc, _ = all_pages(api, f"{V1}/actions", 2, sort="-estimated_monthly_savings")
    got = [(a["estimated_monthly_savings"], a["id"]) for a in desc]
    # Ties (20.0 twice) break by id in the sort's direction; the unpriced one comes last.
    assert got == [
        (50.0, ids[1]),
        (20.0, ids[5]),
        (20.0, ids[3]),
        (7.5, ids[6]),
        (5.0, ids[0]),
        (1.0, ids[4]),
        (None, ids[2]),
    ]
    asc, _ = all_pages(api, f"{V1}/actions", 4, sort="estimated_monthly_savings")
    assert [a["id"] for a in asc] == [ids[4], ids[0], ids[6], ids[3], ids[5], ids[1], ids[2]]

    failed = api.get(f"{V1}/actions", params={"state": "failed"}).json()
    assert [a["id"] for a in failed["items"]] == [ids[6], ids[5], ids[2]]  # default: newest first
    both = api.get(f"{V1}/actions", params=[("state", "failed"), ("state", "blocked")]).json()
    assert both["total"] == 4
    one_policy = api.get(
        f"{V1}/actions", params={"policy": "gp2-to-gp3", "state": "failed", "sort": "id"}
    ).json()
    assert [a["id"] for a in one_policy["items"]] == [ids[5]]
    assert api.get(f"{V1}/actions", params={"offset": 100}).json() == {
        "items": [],
        "total": 7,
        "total_exact": True,
        "limit": 50,
        "offset": 100,
        "next_cursor": None,
    }


def test_bad_input_is_a_problem_document(api: Api) -> None:
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        (f"{V1}/actions", {"state": "exploded"}, 422, "request-validation"),
        (f"{V1}/actions", {"limit": -1}, 422, "request-validation"),
        (f"{V1}/actions", {"limit": 501}, 422, "request-validation"),
        (f"{V1}/actions", {"offset": -5}, 422, "request-validation"),
        (f"{V1}/actions", {"sort": "password"}, 422, "invalid-sort"),
        (f"{V1}/actions/999", {}, 404, "not-found"),
        (f"{V1}/actions/abc", {}, 422, "request-validation"),
        (f"{V1}/runs/999", {}, 404, "not-found"),
        (f"{V1}/inventory/999", {}, 404, "not-found"),
        (f"{V1}/inventory", {"kind": "spaceship"}, 422, "request-validation"),
        (f"{V1}/inventory", {"min_monthly_cost": -1}, 422, "request-validation"),
        (f"{V1}/audit/events", {"event_type": "party"}, 422, "request-validation"),
        (f"{V1}/audit/events", {"since": "yesterday"}, 422, "request-validation"),
        (f"{V1}/policies/no-such-policy", {}, 404, "not-found"),
        (f"{V1}/reports/savings", {"group_by": "colour"}, 422, "request-validation"),
    ]
    for path, params, status, kind in cases:
        problem = is_problem(api.get(path, params=params), status, kind)
        assert problem["instance"] == path
    invalid = is_problem(api.get(f"{V1}/actions", params={"limit": -1}), 422)
    assert invalid["errors"][0]["location"] == "query.limit"
    sort = is_problem(api.get(f"{V1}/actions", params={"sort": "-password"}), 422)
    assert "estimated_monthly_savings" in sort["detail"]  # it says what is allowed
    unknown = is_problem(api.get("/api/v2/actions"), 404)
    assert unknown["type"] == "about:blank"
    is_problem(api.call("DELETE", f"{V1}/actions", "ada"), 405)
    broken = api.post(
        f"{V1}/emergency-stop",
        "otto",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    is_problem(broken, 422, "request-validation")
    is_problem(api.post(f"{V1}/actions/999/approve", "april"), 404, "not-found")
    is_problem(api.post(f"{V1}/actions/999/rollback", "april"), 404, "not-found")
    unknown_policy = api.post(f"{V1}/policies/nope/disable", "otto", json={"reason": "x"})
    assert "known policies" in is_problem(unknown_policy, 404, "not-found")["detail"]


def test_inventory_filters_by_kind_account_region_tag_and_cost(api: Api) -> None:
    a = seed_resource(tags={"env": "dev", "finops:opt-out": "yes"}, monthly_cost=3.0)
    b = seed_resource(tags={"env": "prod"}, monthly_cost=30.0, account_id="222222222222")
    c = seed_resource(kind="ec2", region="eu-west-1", tags={"team": "data"}, monthly_cost=None)
    gone = seed_resource(tags={"env": "dev"}, gone_at=utcnow())

    def ids(**params: Any) -> list[int]:
        found = api.get(f"{V1}/inventory", params={"sort": "id", **params}).json()
        assert found["total"] == len(found["items"])
        return [r["id"] for r in found["items"]]

    assert ids() == [a, b, c]
    assert ids(include_gone=True) == [a, b, c, gone]
    assert ids(kind="ebs") == [a, b] and ids(kind="ec2") == [c]
    assert ids(account="222222222222") == [b]
    assert ids(region="eu-west-1") == [c]
    assert ids(tag="env=dev") == [a]
    assert ids(tag="env") == [a, b]
    assert ids(tag="finops:opt-out=yes") == [a]
    assert ids(tag=["env=dev", "finops:opt-out"]) == [a]
    assert ids(tag="env=staging") == []
    assert ids(min_monthly_cost=5) == [b]
    assert ids(sort="-monthly_cost", kind="ebs") == [b, a]
    is_problem(api.get(f"{V1}/inventory", params={"tag": "=x"}), 422, "invalid-filter")


def test_opportunities_sum_their_savings_over_every_page(api: Api) -> None:
    cheap, dear, other = seed_resource(), seed_resource(), seed_resource(account_id="222222222222")
    seed_opportunity(cheap, estimated_monthly_savings=2.5)
    seed_opportunity(dear, estimated_monthly_savings=40.0)
    seed_opportunity(other, estimated_monthly_savings=None, savings_unknown="no price")
    seed_opportunity(
        other, policy_name="gp2-to-gp3", estimated_monthly_savings=1.0, status="resolved"
    )
    first = {"limit": 1, "sort": "-estimated_monthly_savings", "include_totals": True}
    body = api.get(f"{V1}/opportunities", params=first).json()
    assert body["total"] == 3 and body["total_exact"] and len(body["items"]) == 1
    assert body["total_estimated_monthly_savings"] == 42.5 and body["savings_unknown"] == 1
    assert body["items"][0]["resource_pk"] == dear
    later = {"limit": 1, "sort": "-estimated_monthly_savings", "cursor": body["next_cursor"]}
    second = api.get(f"{V1}/opportunities", params=later).json()
    assert second["items"][0]["resource_pk"] == cheap and second["total"] == 3
    # Without include_totals the sums are not computed (a pass over every match).
    assert second["total_estimated_monthly_savings"] is None and second["savings_unknown"] is None
    mine = api.get(
        f"{V1}/opportunities", params={"account": "111111111111", "include_totals": True}
    ).json()
    assert mine["total"] == 2 and mine["total_estimated_monthly_savings"] == 42.5
    resolved = api.get(f"{V1}/opportunities", params={"status": "resolved"}).json()
    assert [o["policy_name"] for o in resolved["items"]] == ["gp2-to-gp3"]
    assert api.get(f"{V1}/opportunities", params={"min_savings": 10}).json()["total"] == 1


def test_savings_report_by_policy_account_and_month(api: Api) -> None:
    seed_opportunity(seed_resource(), estimated_monthly_savings=10.0)
    seed_opportunity(seed_resource(account_id="222222222222"), estimated_monthly_savings=5.0)
    june = dt.datetime(2026, 6, 15, tzinfo=dt.UTC)
    seed_action(state="succeeded", estimated_monthly_savings=8.0, finished_at=june)
    seed_action(
        state="succeeded",
        estimated_monthly_savings=9.0,
        realized_monthly_savings=7.0,
        finished_at=june,
        policy_name="gp2-to-gp3",
        account_id="222222222222",
    )
    seed_action(state="rolled_back", estimated_monthly_savings=100.0, finished_at=june)
    seed_action(state="failed", estimated_monthly_savings=100.0)

    def rows(group_by: str) -> dict[str, dict[str, Any]]:
        report = api.get(f"{V1}/reports/savings", params={"group_by": group_by}).json()
        assert report["totals"]["estimated_monthly_savings"] == 15.0
        assert report["totals"]["realized_measured"] == 7.0
        assert report["totals"]["realized_from_estimates"] == 8.0  # the measured one is not added
        return {r["key"]: r for r in report["rows"]}

    by_policy = rows("policy")
    assert by_policy["unattached-ebs-delete"]["estimated_monthly_savings"] == 15.0
    assert by_policy["unattached-ebs-delete"]["realized_from_estimates"] == 8.0
    assert by_policy["gp2-to-gp3"]["realized_measured"] == 7.0
    assert by_policy["gp2-to-gp3"]["succeeded_actions"] == 1
    by_account = rows("account")
    assert by_account["222222222222"]["estimated_monthly_savings"] == 5.0
    assert by_account["222222222222"]["realized_measured"] == 7.0
    by_month = rows("month")
    assert by_month["2026-06"]["succeeded_actions"] == 2
    assert by_month[f"{utcnow():%Y-%m}"]["opportunities"] == 2
    one = api.get(f"{V1}/reports/savings", params={"account": "222222222222"}).json()
    assert one["totals"]["estimated_monthly_savings"] == 5.0


def test_savings_report_counts_a_saving_once_and_unpriced_ones_apart(api: Api) -> None:
    """An opportunity stays open until its policy runs again: once its action succeeded the
    saving is realized, and once its resource is gone nothing is left to save; neither is
    also estimated. An unpriced opportunity is counted as unknown, not as $0."""
    seed_opportunity(seed_resource(), estimated_monthly_savings=10.0)
    done = seed_opportunity(seed_resource(), estimated_monthly_savings=30.0)
    seed_action(state="succeeded", opportunity_id=done, estimated_monthly_savings=30.0)
    failed = seed_opportunity(seed_resource(), estimated_monthly_savings=4.0)
    seed_action(state="failed", opportunity_id=failed, estimated_monthly_savings=4.0)
    seed_opportunity(seed_resource(gone_at=utcnow()), estimated_monthly_savings=50.0)
    seed_opportunity(seed_resource(monthly_cost=None), estimated_monthly_savings=None)
    other = seed_resource(account_id="222222222222")
    seed_opportunity(other, estimated_monthly_savings=None, policy_name="gp2-to-gp3")

    for group_by in ("policy", "account", "month"):
        report = api.get(f"{V1}/reports/savings", params={"group_by": group_by}).json()
        totals = report["totals"]
        assert totals["estimated_monthly_savings"] == 14.0  # 10 + 4: not the 30, not the 50
        assert totals["opportunities"] == 4
        assert totals["savings_unknown"] == 2
        assert totals["realized_from_estimates"] == 30.0 and totals["succeeded_actions"] == 1
    by_policy = {r["key"]: r for r in api.get(f"{V1}/reports/savings").json()["rows"]}
    assert by_policy["unattached-ebs-delete"]["savings_unknown"] == 1
    assert by_policy["gp2-to-gp3"]["savings_unknown"] == 1
    assert by_policy["gp2-to-gp3"]["estimated_monthly_savings"] == 0.0
    one = api.get(f"{V1}/reports/savings", params={"account": "222222222222"}).json()
    assert (one["totals"]["opportunities"], one["totals"]["savings_unknown"]) == (1, 1)
    schema = api.client.app.openapi()["components"]["schemas"]["SavingsRow"]
    assert "savings_unknown" in schema["properties"]


def test_policies_pause_resume_and_policy_overrides(api: Api) -> None:
    names = [p["name"] for p in api.get(f"{V1}/policies").json()["items"]]
    assert names == ["gp2-to-gp3", "unattached-ebs-delete"]
    no_reason = api.post(f"{V1}/policies/gp2-to-gp3/disable", "otto", json={})
    assert "reason" in is_problem(no_reason, 422)["detail"]
    past = api.post(
        f"{V1}/policies/gp2-to-gp3/pause",
        "otto",
        json={"until": "2020-01-01T00:00:00Z", "reason": "x"},
    )
    is_problem(past, 422)
    naive = api.post(
        f"{V1}/policies/gp2-to-gp3/pause",
        "otto",
        json={"until": "2099-01-01T00:00:00", "reason": "x"},
    )
    is_problem(naive, 422, "request-validation")
    until = (utcnow() + dt.timedelta(days=1)).isoformat()
    paused = api.post(
        f"{V1}/policies/gp2-to-gp3/pause", "otto", json={"until": until, "reason": "x"}
    )
    assert paused.json()["changed"] is True and paused.json()["policy"]["runs_now"] is False
    listed = api.get(f"{V1}/policies", params={"runs_now": False}).json()["items"]
    assert [p["name"] for p in listed] == ["gp2-to-gp3"]
    is_problem(api.post(f"{V1}/policies/gp2-to-gp3/resume", "otto", json={}), 403)
    resumed = api.post(f"{V1}/policies/gp2-to-gp3/resume", "april", json={})
    assert resumed.json()["policy"]["runs_now"] is True

    body = {"scope": "policy", "target": "unattached-ebs-delete", "reason": "owner away"}
    created = api.post(f"{V1}/overrides", "otto", json=body)
    assert created.status_code == 201 and created.json()["created_by"] == "otto"
    held = api.get(f"{V1}/policies/unattached-ebs-delete").json()
    assert held["runs_now"] is False and "owner away" in held["overrides"][0]
    unknown = api.post(f"{V1}/overrides", "otto", json={**body, "target": "nope"})
    is_problem(unknown, 422, "invalid-override")
    # Resource and account scope are enforced now; a target that names nothing is refused.
    resource = api.post(f"{V1}/overrides", "otto", json={**body, "scope": "resource"})
    assert "unknown resource" in is_problem(resource, 422, "invalid-override")["detail"]
    account = api.post(f"{V1}/overrides", "otto", json={**body, "scope": "account"})
    assert "12-digit" in is_problem(account, 422, "invalid-override")["detail"]
    is_problem(api.post(f"{V1}/overrides", "otto", json={**body, "scope": "galaxy"}), 422)

    override = created.json()["id"]
    is_problem(api.call("DELETE", f"{V1}/overrides/{override}", "otto"), 403)
    ended = api.call("DELETE", f"{V1}/overrides/{override}", "april")
    assert ended.status_code == 200 and ended.json()["active"] is False
    assert api.get(f"{V1}/policies/unattached-ebs-delete").json()["runs_now"] is True
    is_problem(api.call("DELETE", f"{V1}/overrides/{override}", "april"), 409)
    assert api.get(f"{V1}/overrides").json()["total"] == 0
    assert api.get(f"{V1}/overrides", params={"active": False}).json()["total"] == 1
    changes = AuditLogger().events("1h", event_types=frozenset({"config_change", "policy_change"}))
    actors = {(e.subject_type, e.outcome, e.actor) for e in changes}
    assert {
        ("override", "created", "otto"),
        ("override", "ended", "april"),
        ("policy", "paused", "otto"),
        ("policy", "resumed", "april"),
    } <= actors


def test_validate_checks_a_pack_before_it_is_deployed(api: Api) -> None:
    configured = api.post(f"{V1}/policies/validate", "vera").json()
    assert configured["ok"] is True and configured["policies"] == 2
    good = "policies:\n  - name: x\n    resource: ebs\n    filters: [{State: available}]\n"
    assert api.post(f"{V1}/policies/validate", "vera", json={"source": good}).json()["ok"]
    bad = api.post(
        f"{V1}/policies/validate",
        "vera",
        json={"source": "policies:\n  - name: y\n    resource: spaceship\n"},
    ).json()
    assert bad["ok"] is False and "spaceship" in bad["problems"][0]


def test_runs_list_and_detail(api: Api) -> None:
    with session_scope() as session:
        runs = [
            ActionRunRow(triggered_by=who, dry_run=dry)
            for who, dry in (("cli", True), ("otto", False), ("automation", True))
        ]
        session.add_all(runs)
        session.flush()
        run_ids = [r.id for r in runs]
    action = seed_action(state="succeeded", run_id=run_ids[1])
    listed = api.get(f"{V1}/runs", params={"dry_run": True, "sort": "id"}).json()
    assert [r["id"] for r in listed["items"]] == [run_ids[0], run_ids[2]]
    detail = api.get(f"{V1}/runs/{run_ids[1]}").json()
    assert detail["triggered_by"] == "otto" and [a["id"] for a in detail["actions"]] == [action]
    is_problem(api.post(f"{V1}/runs/{run_ids[1]}/rollback", "otto"), 403)


def test_audit_query_and_verify(api: Api) -> None:
    api.post(f"{V1}/emergency-stop", "otto", json={"reason": "drill"})
    api.post(f"{V1}/emergency-stop/release", "ada")
    found = api.get(f"{V1}/audit/events", params={"actor": "otto", "event_type": "emergency_stop"})
    [event] = found.json()["items"]
    assert (event["outcome"], event["details"]["reason"]) == ("engaged", "drill")
    newest = api.get(f"{V1}/audit/events", params={"limit": 1}).json()["items"][0]
    assert newest["event_type"] == "emergency_resume"  # newest first by default
    verified = api.get(f"{V1}/audit/verify").json()
    assert verified["ok"] is True and verified["checked"] == verified["head_id"] > 2
    since = (utcnow() - dt.timedelta(hours=1)).isoformat()
    export = api.get(f"{V1}/audit/export", params={"since": since})
    assert export.headers["content-type"].startswith("application/x-ndjson")
    assert len(export.text.splitlines()) == verified["checked"]


@pytest.mark.parametrize(
    ("method", "path", "kw"),
    [
        ("get", f"{V1}/actions", {"params": {"requested_by": "a\x00b"}}),
        ("get", f"{V1}/inventory", {"params": {"tag": "env=\x00"}}),
        ("get", f"{V1}/audit/events", {"params": {"actor": "\x00"}}),
        ("get", f"{V1}/actions/2147483648", {}),
        ("get", f"{V1}/audit/events", {"params": {"since": "0001-01-01T00:00:00+14:00"}}),
        ("post", f"{V1}/actions/2147483648/approve", {"json": {}}),
    ],
)
def test_values_the_database_cannot_hold_are_the_request_s_fault(
    api: Api, method: str, path: str, kw: dict[str, Any]
) -> None:
    """A NUL in a text (PostgreSQL refuses it, SQLite stores it), an id past a 32-bit
    column, a date that leaves the calendar once in UTC: never a 500."""
    answer = api.call(method.upper(), path, user="ada", **kw)
    assert answer.status_code in (200, 404, 422), (path, answer.status_code, answer.text)
    if answer.status_code != 200:
        is_problem(answer, answer.status_code)
