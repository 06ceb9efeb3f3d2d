"""Access control through the HTTP API, on SQLite and PostgreSQL: each role's allowed and
refused calls, tokens that no longer work, separation of duties, the emergency stop."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from backend.api.security import Role
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.models import ActionRow, ApiTokenRow
from backend.core.types import utcnow
from tests.support.api_client import USERS, Api, build_api, is_problem, seed_action

V1 = "/api/v1"


@pytest.fixture
def api(any_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    return build_api(tmp_path, monkeypatch)


def events(event_type: str) -> list[Any]:
    return AuditLogger().events("1h", event_types=frozenset({event_type}))


def action_state(action_id: int) -> str:
    with session_scope() as session:
        row = session.get(ActionRow, action_id)
        assert row is not None
        return row.state


# (method, path with {action} for a fresh waiting action, JSON body, the least role allowed)
CALLS: list[tuple[str, str, dict[str, Any] | None, Role]] = [
    ("GET", "/actions", None, Role.VIEWER),
    ("GET", "/inventory", None, Role.VIEWER),
    ("GET", "/audit/events", None, Role.VIEWER),
    ("GET", "/reports/savings", None, Role.VIEWER),
    ("POST", "/actions/plan", None, Role.OPERATOR),
    ("POST", "/actions/{action}/retry", None, Role.OPERATOR),
    ("POST", "/policies/gp2-to-gp3/disable", {"reason": "noisy"}, Role.OPERATOR),
    ("POST", "/emergency-stop", {"reason": "drill"}, Role.OPERATOR),
    ("POST", "/actions/{action}/approve", None, Role.APPROVER),
    ("POST", "/actions/{action}/reject", {"comment": "not now"}, Role.APPROVER),
    ("POST", "/actions/{action}/rollback", None, Role.APPROVER),
    ("POST", "/policies/gp2-to-gp3/enable", {"reason": "fixed"}, Role.APPROVER),
    ("GET", "/users", None, Role.ADMINISTRATOR),
    ("POST", "/emergency-stop/release", None, Role.ADMINISTRATOR),
    # every other state-changing endpoint: ids that do not exist are fine (404 is not 403)
    ("POST", "/policies/gp2-to-gp3/pause", {"until": "2099-01-01T00:00:00Z", "reason": "x"},
     Role.OPERATOR),
    ("POST", "/policies/gp2-to-gp3/resume", {"reason": "x"}, Role.APPROVER),
    ("POST", "/overrides", {"scope": "policy", "target": "gp2-to-gp3", "reason": "x"},
     Role.OPERATOR),
    ("DELETE", "/overrides/999999", None, Role.APPROVER),
    ("POST", "/runs/999999/rollback", None, Role.APPROVER),
    ("POST", "/users", {"username": "new-user", "role": "viewer"}, Role.ADMINISTRATOR),
    ("PATCH", "/users/new-user", {"disabled": True}, Role.ADMINISTRATOR),
    ("POST", "/users/new-user/tokens", {"name": "t"}, Role.ADMINISTRATOR),
    ("POST", "/tokens/999999/revoke", None, Role.ADMINISTRATOR),
    ("POST", "/dashboard/actions/{action}/approve", {"comment": "ok"}, Role.APPROVER),
]  # fmt: skip
# Open to every signed-in user (or to anyone, for the login itself).
NOT_ROLE_GATED = {
    ("POST", "/auth/login"),
    ("POST", "/auth/logout"),
    ("POST", "/policies/validate"),
}


def test_every_state_changing_endpoint_is_in_the_role_table(api: Api) -> None:
    """A new endpoint that changes state cannot escape the role tests above."""
    spec = api.client.app.openapi()
    changing = {
        (method.upper(), path.removeprefix(V1))
        for path, operations in spec["paths"].items()
        for method in operations
        if method in ("post", "put", "patch", "delete")
    }
    listed = {(m, _template(p)) for m, p, _, _ in CALLS}
    assert {(m, _template(p)) for m, p in changing} - listed - NOT_ROLE_GATED == set()


def _template(path: str) -> str:
    """/actions/{action}/approve and /actions/{action_id}/approve are the same endpoint."""
    return re.sub(r"/(\{[^}]*\}|\d+|gp2-to-gp3|new-user)(?=/|$)", "/{}", path)


@pytest.mark.parametrize(("method", "path", "body", "needed"), CALLS)
def test_each_role_may_do_what_its_rank_allows(
    api: Api, method: str, path: str, body: dict[str, Any] | None, needed: Role
) -> None:
    for user, role in USERS.items():
        action = seed_action(requested_by="someone-else")
        response = api.call(method, V1 + path.format(action=action), user, json=body)
        if role.allows(needed):
            # Allowed: whatever the outcome (a retry of a waiting action is a 409), not a 403.
            assert response.status_code not in (401, 403), (user, response.text)
        else:
            problem = is_problem(response, 403, "forbidden")
            assert needed.value in problem["detail"] and user in problem["detail"]
            assert action_state(action) == "awaiting_approval"  # nothing happened


def test_a_refused_change_is_audited_with_its_actor(api: Api) -> None:
    is_problem(api.post(f"{V1}/actions/plan", "vera"), 403, "forbidden")
    is_problem(api.post(f"{V1}/emergency-stop/release", "otto"), 403, "forbidden")
    refused = [(e.actor, e.subject_id, e.outcome) for e in events("api_call")]
    assert refused == [("vera", "POST /api/v1/actions/plan", "refused")]
    # The release refusal is recorded by EmergencyStop itself, as for the CLI.
    assert [(e.actor, e.outcome) for e in events("emergency_resume")] == [("otto", "refused")]


def test_missing_unknown_expired_revoked_and_disabled_credentials_are_401(api: Api) -> None:
    response = api.get(f"{V1}/actions", user=None)
    assert is_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")
    bad = api.client.get(f"{V1}/actions", headers={"Authorization": "Bearer fo_not-a-token"})
    assert "unknown API token" in is_problem(bad, 401)["detail"]
    basic = api.client.get(f"{V1}/actions", headers={"Authorization": "Basic dmVyYTp4"})
    is_problem(basic, 401, "unauthenticated")

    with session_scope() as session:  # vera's token expired a minute ago
        session.execute(
            update(ApiTokenRow)
            .where(ApiTokenRow.id == api.token_ids["vera"])
            .values(expires_at=utcnow() - dt.timedelta(minutes=1))
        )
    assert "expired" in is_problem(api.get(f"{V1}/actions", "vera"), 401)["detail"]

    assert api.get(f"{V1}/actions", "otto").status_code == 200
    revoked = api.post(f"{V1}/tokens/{api.token_ids['otto']}/revoke", "ada")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert "revoked" in is_problem(api.get(f"{V1}/actions", "otto"), 401)["detail"]

    assert api.call("PATCH", f"{V1}/users/april", "ada", json={"disabled": True}).is_success
    assert "disabled" in is_problem(api.get(f"{V1}/actions", "april"), 401)["detail"]

    assert api.post(f"{V1}/auth/logout", "abe").status_code == 200  # revokes its own token
    is_problem(api.get(f"{V1}/auth/me", "abe"), 401)
    issued = [e for e in events("config_change") if e.subject_type == "api_token"]
    assert [(e.actor, e.outcome) for e in issued if e.outcome == "revoked"] == [
        ("ada", "revoked"),
        ("abe", "revoked"),
    ]


def test_plan_then_separation_of_duties_then_approval(api: Api) -> None:
    from tests.support.api_client import seed_resource

    seed_resource()
    planned = api.post(f"{V1}/actions/plan", "april")  # an approver may plan (operator+)
    assert planned.status_code == 200, planned.text
    [action] = planned.json()["awaiting"]
    assert api.get(f"{V1}/actions/{action}").json()["requested_by"] == "april"

    own = is_problem(api.post(f"{V1}/actions/{action}/approve", "april"), 403)
    assert own["type"].endswith("separation-of-duties") and "april" in own["detail"]
    assert action_state(action) == "awaiting_approval"

    before = utcnow()
    approved = api.post(f"{V1}/actions/{action}/approve", "abe")
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert (body["state"], body["approved_by"], body["approval_expired"]) == (
        "approved",
        "abe",
        False,
    )
    expires = dt.datetime.fromisoformat(body["approval_expires_at"].replace("Z", "+00:00"))
    assert dt.timedelta(hours=23.9) < expires - before < dt.timedelta(hours=24.1)
    assert action_state(action) == "approved"
    assert [(e.actor, e.outcome) for e in events("approval")] == [("abe", "approved")]

    again = is_problem(api.post(f"{V1}/actions/{action}/approve", "ada"), 409, "invalid-state")
    assert "not awaiting approval" in again["detail"]


def test_an_expired_approval_shows_and_can_be_given_again(api: Api) -> None:
    past = utcnow() - dt.timedelta(hours=1)
    action = seed_action(
        state="approved", approved_by="abe", approved_at=past, approval_expires_at=past
    )
    assert api.get(f"{V1}/actions/{action}").json()["approval_expired"] is True
    again = api.post(f"{V1}/actions/{action}/approve", "april")
    assert again.status_code == 200, again.text
    assert again.json()["approved_by"] == "april" and again.json()["approval_expired"] is False


def test_reject_needs_a_comment_and_keeps_it(api: Api) -> None:
    action = seed_action()
    empty = api.post(f"{V1}/actions/{action}/reject", "april", json={"comment": ""})
    is_problem(empty, 422, "request-validation")
    done = api.post(f"{V1}/actions/{action}/reject", "april", json={"comment": "owner objects"})
    assert done.status_code == 200 and done.json()["state"] == "rejected"
    [event] = events("rejection")
    assert (event.actor, event.details["reason"]) == ("april", "owner objects")
    is_problem(api.post(f"{V1}/actions/{action}/reject", "april", json={"comment": "x"}), 409)


def test_emergency_stop_engage_by_operator_release_by_administrator_only(api: Api) -> None:
    assert api.get(f"{V1}/emergency-stop").json()["engaged"] is False
    is_problem(api.post(f"{V1}/emergency-stop", "vera", json={"reason": "x"}), 403)
    is_problem(api.post(f"{V1}/emergency-stop", "otto", json={"reason": " "}), 422)

    engaged = api.post(f"{V1}/emergency-stop", "otto", json={"reason": "prod volume deleted"})
    assert engaged.status_code == 200, engaged.text
    assert (engaged.json()["engaged"], engaged.json()["engaged_by"]) == (True, "otto")
    [event] = events("emergency_stop")
    assert (event.actor, event.outcome, event.details["reason"]) == (
        "otto",
        "engaged",
        "prod volume deleted",
    )

    for user in ("otto", "april"):
        is_problem(api.post(f"{V1}/emergency-stop/release", user), 403, "forbidden")
    assert api.get(f"{V1}/emergency-stop").json()["engaged"] is True

    released = api.post(f"{V1}/emergency-stop/release", "ada")
    assert released.status_code == 200
    assert (released.json()["engaged"], released.json()["released_by"]) == (False, "ada")
    outcomes = [(e.actor, e.outcome) for e in events("emergency_resume")]
    assert outcomes == [("otto", "refused"), ("april", "refused"), ("ada", "released")]


def test_administrators_manage_users_and_tokens(api: Api) -> None:
    created = api.post(f"{V1}/users", "ada", json={"username": "nina", "role": "operator"})
    assert created.status_code == 201 and created.json()["role"] == "operator"
    is_problem(api.post(f"{V1}/users", "ada", json={"username": "nina", "role": "viewer"}), 409)
    is_problem(api.post(f"{V1}/users", "ada", json={"username": "x", "role": "boss"}), 422)
    reserved = api.post(f"{V1}/users", "ada", json={"username": "system", "role": "viewer"})
    assert "reserved" in is_problem(reserved, 422)["detail"]

    issued = api.post(f"{V1}/users/nina/tokens", "ada", json={"expires_days": 1})
    assert issued.status_code == 201
    token = issued.json()["token"]
    me = api.client.get(f"{V1}/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json() == {"username": "nina", "role": "operator", "token_id": issued.json()["id"]}
    with session_scope() as session:  # only the hash is kept
        stored = session.scalar(select(ApiTokenRow.token_hash).where(ApiTokenRow.name == "api"))
    assert stored is not None and token not in stored

    is_problem(api.call("PATCH", f"{V1}/users/ada", "ada", json={"role": "viewer"}), 409)
    listed = {u["username"]: u for u in api.get(f"{V1}/users", "ada").json()}
    assert listed["nina"]["active_tokens"] == 1 and listed["vera"]["role"] == "viewer"


def test_login_with_a_password_gives_a_short_lived_token(api: Api) -> None:
    body = {"username": "dash", "role": "viewer", "password": "correct horse battery"}
    assert api.post(f"{V1}/users", "ada", json=body).status_code == 201
    wrong = api.post(f"{V1}/auth/login", None, json={"username": "dash", "password": "nope"})
    assert is_problem(wrong, 401)["detail"] == "unknown user or wrong password"
    nobody = api.post(f"{V1}/auth/login", None, json={"username": "zed", "password": "nope"})
    assert is_problem(nobody, 401)["detail"] == "unknown user or wrong password"
    ok = api.post(
        f"{V1}/auth/login", None, json={"username": "dash", "password": "correct horse battery"}
    )
    assert ok.status_code == 200, ok.text
    expires = dt.datetime.fromisoformat(ok.json()["expires_at"].replace("Z", "+00:00"))
    assert expires - utcnow() < dt.timedelta(hours=12, minutes=1)
    headers = {"Authorization": f"Bearer {ok.json()['token']}"}
    assert api.client.get(f"{V1}/actions", headers=headers).status_code == 200
    logins = [(e.actor, e.outcome) for e in events("login")]
    assert logins == [("dash", "refused"), ("zed", "refused"), ("dash", "succeeded")]


def test_a_read_records_the_tokens_use(api: Api) -> None:
    """The route only reads (its session is rolled back), yet the use is recorded."""
    token_id = api.token_ids["vera"]
    with session_scope() as session:
        row = session.get(ApiTokenRow, token_id)
        assert row is not None
        row.last_used_at = None
    before = utcnow()
    assert api.get(f"{V1}/inventory").status_code == 200
    with session_scope() as session:
        row = session.get(ApiTokenRow, token_id)
        assert row is not None and row.last_used_at is not None
        assert row.last_used_at >= before.replace(microsecond=0)


def test_last_used_is_written_once_a_minute_and_never_goes_back(api: Api) -> None:
    from backend.api.accounts import authenticate, mark_used

    token_id = api.token_ids["vera"]
    start = utcnow().replace(microsecond=0) + dt.timedelta(hours=1)

    def at(seconds: int) -> dt.datetime:
        return start + dt.timedelta(seconds=seconds)

    def last_used() -> dt.datetime | None:
        with session_scope() as session:
            row = session.get(ApiTokenRow, token_id)
            assert row is not None
            return row.last_used_at

    for seconds, written in ((0, 0), (30, 0), (61, 61)):
        with session_scope() as session:
            authenticate(session, api.tokens["vera"], now=at(seconds))
        assert last_used() == at(written), seconds
    # A request that read the token before 61 was written finds its write done already.
    with session_scope() as session:
        mark_used(session, token_id, at(70))
    assert last_used() == at(61)
    with session_scope() as session:
        authenticate(session, api.tokens["vera"], now=at(125))
    assert last_used() == at(125)
