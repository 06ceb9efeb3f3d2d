"""Outages of the database and of Redis: the brake still engages where it can and says
where it did not, and nothing waits forever on a server that does not answer."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner, Result

from backend.config import reset_settings_cache
from backend.core import migrations
from backend.core.database import dispose_engines
from backend.core.emergency_stop import EmergencyStop
from backend.core.safety_checker import SafetyChecker
from backend.core.stop_fast_path import STOP_KEY
from tests.support.servers import free_port


def finops(*args: str) -> Result:
    import backend.cli.emergency  # noqa: F401 - registers the commands
    from backend.cli.app import app, console, err

    console.width = err.width = 250
    return CliRunner().invoke(app, list(args))


def _database_down(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing listens there: refused at once, as a stopped PostgreSQL is.
    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://u@127.0.0.1:{free_port()}/x")
    reset_settings_cache()
    dispose_engines()


def test_emergency_stop_with_the_database_down_sets_the_redis_key_and_says_not_persisted(
    broker: redis.Redis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _database_down(monkeypatch)
    result = finops("emergency-stop", "--reason", "drill: db down", "--actor", "oncall")
    assert result.exit_code == 3, result.output
    assert broker.get(STOP_KEY) == b"drill: db down"  # every worker refuses on it
    out = " ".join(result.output.split())
    assert "SET IN REDIS ONLY, NOT persisted in the database" in out, out
    assert "finops emergency-stop` again once the database answers" in out

    # The database back, never told: the status says what the key is, not "resume again".
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'back.db'}")
    reset_settings_cache()
    migrations.upgrade()
    state = EmergencyStop().state()
    assert state.stops and not state.engaged
    assert "engaged in Redis only; not recorded in the database" in state.describe()
    assert "resume` again once Redis answers" not in state.describe()
    status = str(SafetyChecker().system_status())
    assert "engaged in Redis only; not recorded in the database" in status, status


def test_emergency_stop_with_database_and_redis_down_says_nothing_engaged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    _database_down(monkeypatch)
    result = finops("emergency-stop", "--reason", "drill", "--actor", "oncall")
    assert result.exit_code == 3, result.output
    out = " ".join(result.output.split())
    assert "EMERGENCY STOP NOT ENGAGED" in out and "replicas=0" in out, out
