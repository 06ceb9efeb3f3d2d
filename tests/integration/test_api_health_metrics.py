"""/health/live, /health/ready and /metrics on SQLite and PostgreSQL, healthy and not."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from backend.api import create_app
from backend.config import reset_settings_cache
from backend.core import migrations
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.models import ScanRunRow, WorkerHeartbeatRow
from backend.core.stop_fast_path import STOP_KEY
from backend.core.types import utcnow
from tests.support.api_client import (
    Api,
    build_api,
    is_problem,
    seed_action,
    seed_opportunity,
    seed_resource,
)

DEAD_DATABASE = "postgresql://nobody@127.0.0.1:1/none"  # a closed port: refused at once
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def api(any_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    return build_api(tmp_path, monkeypatch)


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_ready_lists_every_check_and_stays_ready_under_an_emergency_stop(api: Api) -> None:
    assert api.get("/health/live", user=None).json() == {"status": "alive"}
    ready = api.get("/health/ready", user=None)
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert set(checks) == {
        "database",
        "redis",
        "schema",
        "safety_system",
        "emergency_stop",
        "workers",
    }
    assert all(c["status"] == "pass" for c in checks.values()), checks

    api.post("/api/v1/emergency-stop", "otto", json={"reason": "P0 drill"})
    stopped = api.get("/health/ready", user=None)
    # The runbook keeps using the API (and `curl -f .../health/ready`) after engaging it.
    assert stopped.status_code == 200 and stopped.json()["status"] == "ready"
    stop = stopped.json()["checks"]["emergency_stop"]
    assert stop["status"] == "warn" and "P0 drill" in stop["detail"]


def test_not_ready_and_metrics_down_when_the_database_is_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", DEAD_DATABASE)
    reset_settings_cache()
    client = TestClient(create_app(), raise_server_exceptions=False)
    assert client.get("/health/live").status_code == 200  # liveness does not need the database
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not ready"
    assert body["reasons"][0].startswith("database: cannot use database")
    assert "127.0.0.1:1" in body["reasons"][0]
    assert body["checks"]["schema"]["detail"] == "not checked: the database is unavailable"

    samples = scrape(client)
    assert value(samples, "finops_automation_engine_status") == 0.0
    assert value(samples, "finops_metrics_scrape_errors", part="database") == 1.0
    assert value(samples, "finops_actions", state="approved", policy="x") is None

    call = client.get("/api/v1/actions", headers={"Authorization": "Bearer fo_x"})
    problem = is_problem(call, 503, "database-unavailable")
    assert "nobody" not in problem["detail"] and call.headers["retry-after"] == "10"


def test_not_ready_while_the_schema_is_behind(any_database: str) -> None:
    migrations.upgrade()
    migrations.downgrade()  # an empty database: the code needs revisions it does not have
    client = TestClient(create_app(), raise_server_exceptions=False)
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    schema = ready.json()["checks"]["schema"]
    assert schema["status"] == "fail" and "finops db upgrade" in schema["detail"]


def test_redis_is_checked_when_configured(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    reset_settings_cache()
    down = TestClient(create_app()).get("/health/ready")
    assert down.status_code == 503
    assert any(r.startswith("redis:") for r in down.json()["reasons"])

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    reset_settings_cache()
    client = TestClient(create_app())
    up = client.get("/health/ready")
    assert up.status_code == 200, up.text
    # No worker has sent a heartbeat yet: reported, but the API itself is ready.
    assert up.json()["checks"]["workers"]["status"] == "warn"
    assert value(scrape(client), "finops_automation_engine_status") == 0.0
    with session_scope() as session:
        session.add(WorkerHeartbeatRow(worker="w1", last_seen=utcnow()))
    assert client.get("/health/ready").json()["checks"]["workers"]["status"] == "pass"
    samples = scrape(client)
    assert value(samples, "finops_workers_alive") == 1.0
    assert value(samples, "finops_automation_engine_status") == 1.0


def test_metrics_match_the_seeded_data(api: Api) -> None:
    for state, policy in [
        ("approved", "gp2-to-gp3"),
        ("approved", "gp2-to-gp3"),
        ("failed", "unattached-ebs-delete"),
        ("approved", "unattached-ebs-delete"),
    ]:
        seed_action(state=state, policy_name=policy, approved_at=utcnow())
    seed_action(state="approved", not_before=utcnow() + dt.timedelta(days=1))  # not due yet
    seed_action(state="succeeded", estimated_monthly_savings=8.0)
    seed_action(state="succeeded", estimated_monthly_savings=9.0, realized_monthly_savings=6.0)
    seed_opportunity(seed_resource(), estimated_monthly_savings=12.5)
    seed_opportunity(seed_resource(), estimated_monthly_savings=2.5)
    started = utcnow() - dt.timedelta(seconds=42)
    with session_scope() as session:
        session.add(
            ScanRunRow(
                started_at=started,
                finished_at=started + dt.timedelta(seconds=42),
                status="partial",
                counts={"resources": 321},
                failures={"111/us-east-1/ec2": "AccessDenied: no", "111/eu/rds": "AccessDenied: x"},
            )
        )
    audit = AuditLogger()

    def event(kind: str, outcome: str, **details: object) -> None:
        audit.log(
            kind, subject_type="action", subject_id=1, actor="w", outcome=outcome, details=details
        )

    event(
        "safety_verdict",
        "blocked",
        stage="execute",
        summary="protected-tag: env=prod; dependency: in an Auto Scaling group",
    )
    event("safety_verdict", "blocked", summary="protected-tag: env=prod", **{"from": "approved"})
    event("safety_verdict", "blocked", rule="blast-radius", summary="too many")
    event("execution", "failed", error="UnauthorizedOperation: not allowed")
    event("execution", "succeeded")

    samples = scrape(api.client)
    assert value(samples, "finops_automation_engine_status") == 1.0
    assert value(samples, "finops_emergency_stop_engaged") == 0.0
    assert value(samples, "finops_actions", state="approved", policy="gp2-to-gp3") == 2.0
    assert value(samples, "finops_actions", state="approved", policy="unattached-ebs-delete") == 2.0
    assert value(samples, "finops_actions", state="failed", policy="unattached-ebs-delete") == 1.0
    assert value(samples, "finops_action_queue_backlog") == 3.0
    assert value(samples, "finops_estimated_monthly_savings_usd") == 15.0
    assert value(samples, "finops_realized_monthly_savings_usd", basis="measured") == 6.0
    assert value(samples, "finops_realized_monthly_savings_usd", basis="estimate") == 8.0
    assert value(samples, "finops_last_scan_duration_seconds") == pytest.approx(42.0)
    assert value(samples, "finops_last_scan_resources") == 321.0
    assert value(samples, "finops_last_scan_aws_errors", code="AccessDenied") == 2.0
    # The state change after a verdict (it has "from") is not a second failure.
    assert value(samples, "finops_safety_check_failures_total", rule="protected-tag") == 1.0
    assert value(samples, "finops_safety_check_failures_total", rule="dependency") == 1.0
    assert value(samples, "finops_safety_check_failures_total", rule="blast-radius") == 1.0
    reason = {"reason": "UnauthorizedOperation"}
    assert value(samples, "finops_action_failures_total", **reason) == 1.0
    assert value(samples, "finops_action_executions_total", result="succeeded") == 1.0
    assert all(v == 0.0 for (n, _), v in samples.items() if n == "finops_metrics_scrape_errors")

    event("execution", "failed", error="UnauthorizedOperation: again")  # counted once more
    api.post("/api/v1/emergency-stop", "otto", json={"reason": "drill"})
    after = scrape(api.client)
    assert value(after, "finops_action_failures_total", **reason) == 2.0
    assert value(after, "finops_emergency_stop_engaged") == 1.0
    assert value(after, "finops_automation_engine_status") == 0.0
    routes = {
        dict(labels).get("route") for (n, labels) in after if n == "finops_api_requests_total"
    }
    assert "/api/v1/emergency-stop" in routes and "/metrics" in routes  # templates, not raw paths


def test_ready_turns_503_when_postgresql_stops_and_recovers_when_it_returns(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL "stopped" for the API only (a proxy cuts it), then back."""
    from backend.core.database import dispose_engines
    from backend.core.migrations import upgrade
    from tests.support.tcp_proxy import TcpProxy

    upgrade()
    proxy, through = TcpProxy.in_front_of(postgres_url)
    try:
        monkeypatch.setenv("DATABASE_URL", through)
        reset_settings_cache()
        dispose_engines()
        client = TestClient(create_app(), raise_server_exceptions=False)
        assert client.get("/health/ready").status_code == 200
        proxy.cut()
        down = client.get("/health/ready")
        assert down.status_code == 503
        assert down.json()["reasons"][0].startswith("database:")
        proxy.restore()
        assert client.get("/health/ready").status_code == 200  # the pool reconnects
    finally:
        proxy.close()
        dispose_engines()


def test_a_stop_key_left_in_redis_is_a_stop_in_ready_and_metrics(
    broker: redis.Redis, api: Api
) -> None:
    """Released in the database, but the Redis key (which check() refuses on) is still
    there, as after a `finops resume` that could not reach Redis: not "running"."""
    client = TestClient(create_app())
    with session_scope() as session:
        session.add(WorkerHeartbeatRow(worker="w1", last_seen=utcnow()))
    assert value(scrape(client), "finops_automation_engine_status") == 1.0
    broker.set(STOP_KEY, "incident 7")

    ready = client.get("/health/ready")
    assert ready.status_code == 200  # a warning, as for an engaged stop
    stop = ready.json()["checks"]["emergency_stop"]
    assert stop["status"] == "warn", stop
    assert "engaged in Redis only" in stop["detail"] and "finops resume" in stop["detail"]
    samples = scrape(client)
    assert value(samples, "finops_emergency_stop_engaged") == 1.0
    assert value(samples, "finops_automation_engine_status") == 0.0

    broker.delete(STOP_KEY)
    assert client.get("/health/ready").json()["checks"]["emergency_stop"]["status"] == "pass"
    assert value(scrape(client), "finops_emergency_stop_engaged") == 0.0
