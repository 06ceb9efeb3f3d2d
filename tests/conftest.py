"""Shared fixtures: isolated settings and databases, a moto_server, AWS credentials."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from backend.config import reset_settings_cache
from backend.core.database import dispose_engines
from tests.support.servers import (
    moto_server_process,
    postgres_available,
    reset_moto,
    scratch_postgres_database,
)

# The files that take longest (a minute or more on two cores, from --durations), started
# first: `make test` runs `-n 2 --dist loadfile`, and a run that reaches one of these last
# ends on it alone while the other worker waits.
LONGEST_FIRST = (
    "tests/unit/core/test_engine_properties.py",
    "tests/integration/test_api_schemathesis.py",
    "tests/integration/test_runtime_chaos.py",
    "tests/integration/test_alert_rules.py",
    "tests/integration/test_runtime.py",
    "tests/integration/test_scripts.py",
)


def pytest_configure(config: pytest.Config) -> None:
    """In-process code logs as the commands configure it (backend/cli main), not with
    structlog's defaults, which draw every logged traceback with rich, local variables
    included: seconds of CPU each, in tests that make the API fail on purpose."""
    from backend.logging_setup import configure_logging

    configure_logging()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order


_ENV_TO_CLEAR = (
    "DATABASE_URL",
    "REDIS_URL",
    "COST_OPTIMIZATION_ROLE_ARN",
    "AWS_ENDPOINT_URL",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
)


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Every test starts from defaults: its own data directory, no servers, fake credentials."""
    for name in _ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in __import__("os").environ if n.startswith("FINOPS_")]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FINOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.chdir(tmp_path)
    reset_settings_cache()
    yield
    reset_settings_cache()
    dispose_engines()


@pytest.fixture(scope="session")
def moto_server_url() -> Iterator[str]:
    with moto_server_process() as url:
        yield url


@pytest.fixture
def moto_url(moto_server_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A clean moto_server for this test, with AWS_ENDPOINT_URL pointing at it."""
    reset_moto(moto_server_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server_url)
    reset_settings_cache()
    return moto_server_url


@pytest.fixture(scope="session")
def postgres_server() -> None:
    if not postgres_available():
        pytest.fail("PostgreSQL is not reachable (FINOPS_TEST_POSTGRES_URL); start it")


@pytest.fixture
def postgres_url(postgres_server: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh PostgreSQL database for this test; DATABASE_URL points at it."""
    with scratch_postgres_database() as url:
        monkeypatch.setenv("DATABASE_URL", url)
        reset_settings_cache()
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_database(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[str]:
    """Run the test on the embedded SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
        monkeypatch.setenv("DATABASE_URL", url)
        reset_settings_cache()
        yield url
    else:
        request.getfixturevalue("postgres_server")
        with scratch_postgres_database() as url:
            monkeypatch.setenv("DATABASE_URL", url)
            reset_settings_cache()
            yield url


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """A Redis database of the runtime tests' own (flushed), REDIS_URL pointing at it, and
    the test process's Celery app configured to send there."""
    from backend.config import get_settings
    from backend.runtime.celery_app import app, celery_config
    from tests.support.workers import RUNTIME_REDIS_URL, redis_available

    if not redis_available():
        pytest.fail(f"Redis is not reachable at {RUNTIME_REDIS_URL}; start it (.ci/run does)")
    client = redis.Redis.from_url(RUNTIME_REDIS_URL)
    client.flushdb()
    monkeypatch.setenv("REDIS_URL", RUNTIME_REDIS_URL)
    monkeypatch.setenv("FINOPS_HEARTBEAT_INTERVAL_SECONDS", "1")
    reset_settings_cache()
    app.conf.update(celery_config(get_settings()))
    yield client
    client.flushdb()
