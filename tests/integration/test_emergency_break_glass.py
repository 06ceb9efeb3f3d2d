"""POST /emergency-stop while the database is down: an operator whose token this API process
checked recently still engages the stop's Redis key (the workers hear it), and is told the
stop is not persisted; any other caller, and any other request, gets the outage's 503."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from backend.api.accounts import Principal, TokenRecord
from backend.api.break_glass import RecentOperators
from backend.api.security import Role
from backend.config import reset_settings_cache
from backend.core.database import dispose_engines
from backend.core.stop_fast_path import STOP_KEY
from tests.support.api_client import Api, build_api
from tests.support.tcp_proxy import TcpProxy

V1 = "/api/v1"


@pytest.fixture
def api_behind_proxy(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[Api, TcpProxy]]:
    """The API on PostgreSQL through a proxy the test can cut; read caches off, so that
    every token check goes to the database."""
    proxy, through = TcpProxy.in_front_of(postgres_url)
    try:
        monkeypatch.setenv("DATABASE_URL", through)
        monkeypatch.setenv("FINOPS_API_READ_CACHE", "0")
        reset_settings_cache()
        dispose_engines()
        yield build_api(tmp_path, monkeypatch), proxy
    finally:
        proxy.close()
        dispose_engines()


def test_an_operator_checked_before_the_outage_engages_the_redis_stop(
    api_behind_proxy: tuple[Api, TcpProxy], own_redis: redis.Redis
) -> None:
    api, proxy = api_behind_proxy
    for user in ("otto", "vera"):  # both checked in full while the database answers
        assert api.get(f"{V1}/emergency-stop", user).status_code == 200
    proxy.cut()

    refused = api.post(f"{V1}/emergency-stop", "vera", json={"reason": "db down"})
    assert refused.status_code == 503, refused.text
    assert refused.json()["type"].endswith("database-unavailable")  # a viewer never may
    never_seen = api.post(f"{V1}/emergency-stop", "ada", json={"reason": "db down"})
    assert never_seen.json()["type"].endswith("database-unavailable")
    assert own_redis.get(STOP_KEY) is None
    assert api.get(f"{V1}/emergency-stop", "otto").status_code == 503  # reading: no way in

    engaged = api.post(f"{V1}/emergency-stop", "otto", json={"reason": "db down"})

    assert engaged.status_code == 503, engaged.text
    body = engaged.json()
    assert body["type"].endswith("emergency-stop-not-persisted")
    assert body["stop_key_set"] is True
    assert "EMERGENCY STOP SET IN REDIS ONLY" in body["detail"]
    assert "POST /emergency-stop again once the database answers" in body["detail"]
    assert "127.0.0.1" not in body["detail"]  # where the database is stays in the log
    assert own_redis.get(STOP_KEY) is not None

    proxy.restore()  # the database back: the same call persists the stop
    persisted = api.post(f"{V1}/emergency-stop", "otto", json={"reason": "db back"})
    assert persisted.status_code == 200, persisted.text
    assert persisted.json()["engaged"] is True


def _record(role: Role, expires_at: dt.datetime | None = None) -> TokenRecord:
    return TokenRecord(Principal(1, "someone", role, 7), None, expires_at, None, False)


def test_only_operators_are_remembered_and_only_for_the_window() -> None:
    now = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
    recent = RecentOperators(window=dt.timedelta(minutes=15), size=2)
    recent.remember("viewer-token", _record(Role.VIEWER), now)
    recent.remember("operator-token", _record(Role.OPERATOR), now)
    assert recent.recall("viewer-token", now) is None
    assert recent.recall("operator-token", now + dt.timedelta(minutes=15)) is not None
    assert recent.recall("operator-token", now + dt.timedelta(minutes=16)) is None
    # the least recently checked go first
    recent.remember("admin-1", _record(Role.ADMINISTRATOR), now)
    recent.remember("admin-2", _record(Role.ADMINISTRATOR), now)
    assert recent.recall("operator-token", now) is None
    assert recent.recall("admin-2", now) is not None
    # refused by the database since, or demoted: forgotten
    recent.forget("admin-2")
    assert recent.recall("admin-2", now) is None
    recent.remember("admin-1", _record(Role.VIEWER), now)
    assert recent.recall("admin-1", now) is None


def test_a_pool_with_every_connection_stuck_is_an_outage() -> None:
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    from backend.api.problems import is_outage

    assert is_outage(PoolTimeoutError("QueuePool limit of size 10 overflow 10 reached"))
    assert not is_outage(ValueError("a bug"))
