"""Errors reach clients as problem details, never as stack traces."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.api import create_app
from backend.config import SettingsError, load_settings


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    app = create_app(load_settings(database_url=f"sqlite:///{tmp_path / 'unused.db'}"))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("password=hunter2 in a stack trace")

    return TestClient(app, raise_server_exceptions=False)


def test_an_unexpected_error_is_a_500_problem_with_an_id_and_no_details(
    client: TestClient,
) -> None:
    response = client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:finops:problem:internal-error"
    assert body["error_id"] in body["detail"]
    assert "hunter2" not in response.text and "Traceback" not in response.text


def test_a_validation_problem_does_not_echo_the_input(client: TestClient) -> None:
    response = client.post("/api/v1/auth/login", json={"username": "", "password": "hunter2"})
    assert response.status_code == 422
    body = response.json()
    assert body["errors"][0]["location"] == "body.username"
    assert "hunter2" not in response.text


def test_the_default_secret_is_refused_outside_development(tmp_path: Path) -> None:
    settings = load_settings(environment="production", data_dir=tmp_path)
    with pytest.raises(SettingsError, match="FINOPS_SECRET_KEY"):
        create_app(settings)
    create_app(load_settings(environment="production", secret_key="x" * 40, data_dir=tmp_path))


def test_openapi_lists_every_area(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/health/ready",
        "/api/v1/inventory",
        "/api/v1/opportunities",
        "/api/v1/policies/{name}/pause",
        "/api/v1/overrides",
        "/api/v1/actions/{action_id}/approve",
        "/api/v1/runs/{run_id}/rollback",
        "/api/v1/emergency-stop/release",
        "/api/v1/audit/verify",
        "/api/v1/reports/savings",
        "/api/v1/engine/status",
        "/api/v1/users/{username}/tokens",
    ):
        assert path in paths, path
