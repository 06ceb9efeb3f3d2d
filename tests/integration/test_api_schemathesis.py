"""Schemathesis against the app's own OpenAPI document, as an administrator, on SQLite.

For every operation, Schemathesis generates requests from the document: valid ones, and
invalid ones the API must refuse with a 4xx. No answer may be a 5xx, and every answer must
be what the document declares: a documented status code, its content type, its headers and
its schema. The database is seeded with a row of each kind, so that generated ids sometimes
hit a real row and not only the 404 path. AWS points at a closed local port: a call that
reaches AWS (a retry's fresh describe) fails fast and closed, and never leaves the machine.

The generation is deterministic (derandomized), and small enough for the suite: about
MAX_EXAMPLES cases per operation and mode. The operations are driven through Schemathesis's
Python API (`as_strategy` under Hypothesis) rather than its pytest plugin, whose lazy
`from_fixture` schemas fail under pytest 9 (`'Function' object has no attribute '_nodeid'`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import update

from backend.api.accounts import create_user, issue_token
from backend.api.security import Role
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.models import (
    ActionRunRow,
    ApiTokenRow,
    EngineStateRow,
    NotificationRow,
    OverrideRow,
    ScanRunRow,
    UserRow,
)
from backend.core.types import utcnow
from tests.support.api_client import Api, build_api, seed_action, seed_opportunity, seed_resource

ROOT = "schema-root"  # the administrator the generated requests act as
MAX_EXAMPLES = 30  # per operation and mode: the whole run takes about 30 s
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def seed() -> None:
    for kind, cost in (("ebs", 10.0), ("ec2", 80.0), ("rds", None)):
        pk = seed_resource(kind=kind, monthly_cost=cost, tags={"env": "dev", "team": "a"})
        seed_opportunity(pk, estimated_monthly_savings=cost)
    now = utcnow()
    with session_scope() as session:
        run = ActionRunRow(triggered_by="otto", dry_run=True, status="complete", finished_at=now)
        session.add(run)
        session.add(
            ScanRunRow(
                started_at=now - dt.timedelta(seconds=30),
                finished_at=now,
                status="partial",
                counts={"resources": 3},
                failures={"111/us-east-1/rds": "AccessDenied: no"},
            )
        )
        session.add(OverrideRow(scope="policy", target="gp2-to-gp3", reason="x", created_by="ada"))
        session.add(
            NotificationRow(
                channel="log", severity="P2", category="test", subject="s", body="b", status="sent"
            )
        )
        session.flush()
        run_id = run.id
    for state in ("awaiting_approval", "approved", "blocked", "failed", "succeeded", "rejected"):
        seed_action(state=state, run_id=run_id, estimated_monthly_savings=5.0)


def keep_root_usable(api: Api) -> None:
    """Generated calls may revoke tokens, disable users or engage the emergency stop: undo."""
    with session_scope() as session:
        session.execute(
            update(UserRow)
            .where(UserRow.username == ROOT)
            .values(disabled=False, role=Role.ADMINISTRATOR.value)
        )
        session.execute(
            update(ApiTokenRow)
            .where(ApiTokenRow.id == api.token_ids[ROOT])
            .values(revoked_at=None, expires_at=utcnow() + dt.timedelta(days=1))
        )
        session.execute(update(EngineStateRow).values(emergency_stop=False))


@pytest.fixture
def seeded_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # refused at once
    api = build_api(tmp_path, monkeypatch)
    with session_scope() as session:
        create_user(session, ROOT, Role.ADMINISTRATOR, actor="test", audit=AuditLogger())
        issued = issue_token(
            session, ROOT, actor="test", audit=AuditLogger(), expires_in=dt.timedelta(days=1)
        )
        api.tokens[ROOT], api.token_ids[ROOT] = issued.token, issued.row.id
    seed()
    return api


def test_no_server_error_and_no_schema_violation(seeded_api: Api) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", seeded_api.client.app)
    headers = {"Authorization": f"Bearer {seeded_api.tokens[ROOT]}"}
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: the report has a curl
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                keep_root_usable(seeded_api)
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                check()
            except Unsatisfiable:
                continue  # nothing to make invalid (no parameters, no body)
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - all are reported
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
            tested += 1
    assert tested >= 60, f"only {tested} operation/mode pairs ran"  # ~40 operations, 2 modes
    assert not failures, "\n\n".join(failures)


def test_numbers_past_the_database_range_are_refused_not_crashed_on(seeded_api: Api) -> None:
    """What the first run found: ids past 2**63 reached SQLite and came back as 500s."""
    huge = 2**64
    for path in (
        f"/api/v1/actions/{huge}",
        f"/api/v1/inventory/{huge}",
        f"/api/v1/runs/{huge}",
    ):
        answer = seeded_api.get(path, user=ROOT)
        assert answer.status_code == 422, (path, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["type"] == "urn:finops:problem:out-of-range"
    answer = seeded_api.get("/api/v1/runs", user=ROOT, params={"offset": 2**63})
    assert answer.status_code == 422 and "offset" in answer.text, answer.text


def test_the_document_declares_the_problem_details_errors_are_sent_as(seeded_api: Api) -> None:
    document = seeded_api.get("/openapi.json", user=None).json()
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    operations = [(path, op) for path, ops in document["paths"].items() for op in ops.values()]
    for path, operation in operations:
        if path.startswith("/api/"):
            assert operation["responses"]["default"]["content"] == problem, path
            if "422" in operation["responses"]:
                assert operation["responses"]["422"]["content"] == problem, path
    assert "HTTPValidationError" not in document["components"]["schemas"]
    export = document["paths"]["/api/v1/audit/export"]["get"]["responses"]["200"]
    assert list(export["content"]) == ["application/x-ndjson"]
