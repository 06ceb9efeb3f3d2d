"""Helpers for the API tests (this module holds no tests): an app on the test database,
one user per role with a token, and rows seeded directly."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import insert

from backend.api import create_app
from backend.api.accounts import create_user, issue_token
from backend.api.security import Role
from backend.config import reset_settings_cache
from backend.core import migrations
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.models import ActionRow, OpportunityRow, ResourceRow
from backend.core.types import utcnow

PACK = """\
policies:
  - name: unattached-ebs-delete
    resource: ebs
    filters:
      - State: available
    action: {type: delete, backup: true}
    mode: approval
    risk: high
  - name: gp2-to-gp3
    resource: ebs
    filters: [{VolumeType: gp2}]
    action: {type: modify-volume, volume-type: gp3}
    mode: approval
"""
# One user per role; "abe" is a second approver, for separation of duties.
USERS = {
    "vera": Role.VIEWER,
    "otto": Role.OPERATOR,
    "april": Role.APPROVER,
    "abe": Role.APPROVER,
    "ada": Role.ADMINISTRATOR,
}


@dataclass
class Api:
    client: TestClient
    tokens: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, int] = field(default_factory=dict)

    def call(self, method: str, path: str, user: str | None = None, **kw: Any) -> Response:
        headers = dict(kw.pop("headers", {}))
        if user:
            headers["Authorization"] = f"Bearer {self.tokens[user]}"
        return self.client.request(method, path, headers=headers, **kw)

    def get(self, path: str, user: str | None = "vera", **kw: Any) -> Response:
        return self.call("GET", path, user, **kw)

    def post(self, path: str, user: str | None, **kw: Any) -> Response:
        return self.call("POST", path, user, **kw)


def build_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    """Migrate the test database (DATABASE_URL), point the policies at PACK, add USERS."""
    pack = tmp_path / "pack"
    pack.mkdir(exist_ok=True)
    (pack / "ebs.yml").write_text(PACK)
    monkeypatch.setenv("FINOPS_POLICY_PATHS", str(pack))
    monkeypatch.setenv("FINOPS_RUNBOOK_ECHO", "0")
    reset_settings_cache()
    migrations.upgrade()
    api = Api(TestClient(create_app(), raise_server_exceptions=False))
    with session_scope() as session:
        for name, role in USERS.items():
            create_user(session, name, role, actor="test", audit=AuditLogger())
            issued = issue_token(
                session, name, actor="test", audit=AuditLogger(), expires_in=dt.timedelta(days=1)
            )
            api.tokens[name], api.token_ids[name] = issued.token, issued.row.id
    return api


def seed_resource(**values: Any) -> int:
    now = utcnow()
    row = ResourceRow(
        **{
            "account_id": "111111111111",
            "region": "us-east-1",
            "kind": "ebs",
            "resource_id": f"vol-{uuid.uuid4().hex[:12]}",
            "state": "available",
            "tags": {},
            "attributes": {"State": "available", "VolumeType": "gp3", "Size": 100},
            "monthly_cost": 10.0,
            "first_seen": now,
            "last_seen": now,
            **values,
        }
    )
    with session_scope() as session:
        session.add(row)
        session.flush()
        return row.id


def seed_opportunity(resource_pk: int, **values: Any) -> int:
    row = OpportunityRow(
        **{
            "policy_name": "unattached-ebs-delete",
            "resource_pk": resource_pk,
            "action": "delete",
            "estimated_monthly_savings": 10.0,
            **values,
        }
    )
    with session_scope() as session:
        session.add(row)
        session.flush()
        return row.id


def action_fields(**values: Any) -> dict[str, Any]:
    """A volume delete awaiting approval, with `values` over these."""
    now = utcnow()
    return {
        "idempotency_key": uuid.uuid4().hex,
        "policy_name": "unattached-ebs-delete",
        "account_id": "111111111111",
        "region": "us-east-1",
        "kind": "ebs",
        "resource_id": f"vol-{uuid.uuid4().hex[:12]}",
        "action": "delete",
        "mode": "approval",
        "state": "awaiting_approval",
        "risk": "high",
        "requested_by": "otto",
        "created_at": now,
        "updated_at": now,
        **values,
    }


def seed_action(**values: Any) -> int:
    row = ActionRow(**action_fields(**values))
    with session_scope() as session:
        session.add(row)
        session.flush()
        return row.id


def seed_old_action(**values: Any) -> int:
    """An action written at an older revision: a Core insert names only these columns (and
    those with defaults); the ORM row would name the columns later revisions added."""
    table = ActionRow.__table__
    with session_scope() as session:
        inserted = insert(table).values(action_fields(**values)).returning(table.c.id)
        return int(session.execute(inserted).scalar_one())


def is_problem(response: Response, status: int, kind: str | None = None) -> dict[str, Any]:
    """Assert an RFC 9457 problem document with this status (and type); return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if kind is not None:
        assert body["type"] == f"urn:finops:problem:{kind}", body
    assert "Traceback" not in response.text
    return body
