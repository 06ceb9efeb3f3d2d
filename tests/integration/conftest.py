"""Fixtures of the integration tests beyond the shared ones (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from moto import mock_aws

from backend.config import reset_settings_cache
from backend.core.migrations import upgrade
from tests.support.botocore_faults import Faults
from tests.support.servers import free_port
from tests.support.workers import private_redis


@pytest.fixture
def migrated(any_database: str) -> str:
    """The test's database (SQLite, then PostgreSQL), migrated to head."""
    upgrade()
    return any_database


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Faults]:
    """In-process moto, the embedded SQLite, and a session to inject AWS errors on."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'undo.sqlite'}",
        "FINOPS_DATA_DIR": str(tmp_path),
        "FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN": "100",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("REDIS_URL", "AWS_ENDPOINT_URL", "COST_OPTIMIZATION_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    reset_settings_cache()
    with mock_aws():
        yield Faults()
    reset_settings_cache()


@pytest.fixture
def own_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """A redis-server of this test's own (the shared one's keys are other tests' too), and
    the Celery dispatcher's halt stubbed: what it does is not the point here."""
    from backend.runtime.dispatch import CeleryDispatcher

    monkeypatch.setattr(CeleryDispatcher, "halt", lambda _self: "halt stubbed")
    port = free_port()
    with private_redis(port):
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
        reset_settings_cache()
        yield redis.Redis(port=port)
