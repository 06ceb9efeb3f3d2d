"""Outages of the database and of Redis: the brake still engages where it can and says
where it did not, and nothing waits forever on a server that does not answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

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
from tests.support.tcp_proxy import TcpProxy

T = TypeVar("T")


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
    own_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broker = own_redis
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
    from backend.runtime.dispatch import CeleryDispatcher

    monkeypatch.setattr(CeleryDispatcher, "halt", lambda _self: "halt stubbed")
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    _database_down(monkeypatch)
    result = finops("emergency-stop", "--reason", "drill", "--actor", "oncall")
    assert result.exit_code == 3, result.output
    out = " ".join(result.output.split())
    assert "EMERGENCY STOP NOT ENGAGED" in out and "replicas=0" in out, out


def _within(seconds: float, proxy: TcpProxy, call: Callable[[], T]) -> T:
    """call() answered within `seconds`; else the proxy thawed (the call ends) and a fail."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(call)
        try:
            return future.result(timeout=seconds)
        except TimeoutError:
            proxy.thaw()
            pytest.fail(f"no answer in {seconds} s: it waits on the paused server")


def test_a_paused_postgresql_answers_503_in_seconds_and_the_api_recovers(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """PostgreSQL paused for the API (a proxy holds every byte, as SIGSTOP does: the
    connection is accepted, nothing answers): readiness and requests answer 503 within
    their deadlines instead of hanging, and the pool works again once it answers."""
    from backend.api import readiness
    from tests.support.api_client import build_api

    migrations.upgrade()
    proxy, through = TcpProxy.in_front_of(postgres_url)
    # The probe's whole answer: shorter than both ways a check itself can give up (a pooled
    # connection's ping, 0.5 + 2 s of grace; a reconnect, libpq's connect_timeout of 3 s),
    # so the deadline is what answers. At 3 s it raced the reconnect (CI at f941132).
    monkeypatch.setattr(readiness, "DEADLINE", 2.0)
    monkeypatch.setattr(readiness, "DATABASE_LIMIT", 0.5)
    try:
        monkeypatch.setenv("DATABASE_URL", through)
        monkeypatch.setenv("FINOPS_API_DATABASE_TIMEOUT_SECONDS", "1")
        dispose_engines()
        api = build_api(tmp_path, monkeypatch)
        assert api.get("/health/ready", user=None).status_code == 200  # the pool connected
        assert api.get("/api/v1/actions").status_code == 200
        proxy.freeze()
        # The pooled connection's ping (1 s + 2 s of grace), then a reconnect (3 s).
        listed = _within(8, proxy, lambda: api.get("/api/v1/actions"))
        assert listed.status_code == 503, listed.text
        assert listed.json()["type"].endswith("database-unavailable")
        down = _within(4.5, proxy, lambda: api.get("/health/ready", user=None))
        assert down.status_code == 503, down.text
        assert down.json()["reasons"][0] == "database: no answer in 2 s", down.json()
        proxy.thaw()
        assert api.get("/api/v1/actions").status_code == 200
        assert api.get("/health/ready", user=None).status_code == 200
    finally:
        proxy.close()
        dispose_engines()


def test_without_a_limit_nothing_is_cut_short(postgres_url: str) -> None:
    """Workers, the CLI and migrations set no limit: a statement longer than the API's
    runs to its end; under a limit, the server cancels it (the connection survives)."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from backend.core.database import session_scope
    from backend.core.db_deadline import answer_within

    with session_scope() as session:
        assert session.execute(text("SELECT pg_sleep(1.2), 1")).one()[1] == 1
    timed_out = pytest.raises(OperationalError, match="statement timeout")
    with timed_out, answer_within(0.3), session_scope() as session:
        session.execute(text("SELECT pg_sleep(5)"))
    with answer_within(0.3), session_scope() as session:
        assert session.execute(text("SELECT 2")).scalar_one() == 2


def test_each_transaction_has_its_callers_limit_and_api_requests_set_none(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection made under a limit keeps it as its own: later transactions under the
    same limit (every API request) send no SET; another limit, or none, gets its own."""
    import psycopg
    from sqlalchemy import text

    from backend.core.database import session_scope
    from backend.core.db_deadline import answer_within

    sent: list[str] = []
    execute = psycopg.Cursor.execute

    def counting(self: psycopg.Cursor, query: object, *args: object, **kw: object) -> object:
        sent.append(str(query))
        return execute(self, query, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(psycopg.Cursor, "execute", counting)
    dispose_engines()

    def timeout() -> str:
        with session_scope() as session:
            return str(session.execute(text("SHOW statement_timeout")).scalar_one())

    with answer_within(3):
        assert timeout() == "3s"
        assert timeout() == "3s"
    assert not [q for q in sent if "SET LOCAL" in q]
    with answer_within(0.5):
        assert timeout() == "500ms"
    assert timeout() == "0"  # the same pooled connection, no limit
    assert len([q for q in sent if "SET LOCAL" in q]) == 2


def test_readers_without_a_transaction_have_their_callers_limit_too(postgres_url: str) -> None:
    """The API reads GET requests without a transaction (autocommit), where SET LOCAL does
    nothing: the limit must still reach the server, and no limit must stay behind."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from backend.core.database import session_factory
    from backend.core.db_deadline import answer_within

    dispose_engines()
    reader = session_factory(postgres_url, autocommit=True)

    def timeout() -> str:
        with reader() as session:
            return str(session.execute(text("SHOW statement_timeout")).scalar_one())

    assert timeout() == "0"  # made with no limit
    with answer_within(0.3):
        assert timeout() == "300ms"
        with pytest.raises(OperationalError, match="statement timeout"), reader() as session:
            session.execute(text("SELECT pg_sleep(5)"))
    assert timeout() == "0"


def test_stop_and_resume_finish_with_redis_paused_and_say_the_workers_were_not_told(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Redis paused: the broadcast and the purge never return (kombu reconnects and retries
    a broker that accepts and does not answer). The commands end within their deadline,
    the stop persisted, and say the workers were not told."""
    from celery.app.control import Control

    from backend.runtime import dispatch

    paused = threading.Event()  # never set: the paused broker

    def hang(*_args: object, **_kwargs: object) -> None:
        paused.wait(30)

    monkeypatch.setattr(dispatch, "CONTROL_DEADLINE", 1.0)
    monkeypatch.setattr(Control, "broadcast", hang)  # the class: no app configured yet
    monkeypatch.setattr(dispatch, "_purge_actions", hang)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_settings_cache()
    migrations.upgrade()
    try:
        started = time.monotonic()
        stopped = finops("emergency-stop", "--reason", "drill")
        assert stopped.exit_code == 0, stopped.output
        out = " ".join(stopped.output.split())
        assert "workers NOT told and queue not purged (Redis did not answer in 1 s)" in out, out
        assert EmergencyStop().state().engaged  # persisted in the database
        resumed = finops("resume", "--actor", "a", "--i-am-admin")
        out = " ".join(resumed.output.split())
        assert "resume broadcast failed (Redis did not answer in 1 s)" in out, out
        assert not EmergencyStop().state().engaged
        assert time.monotonic() - started < 10
    finally:
        paused.set()


def test_the_broker_connection_has_socket_timeouts() -> None:
    from backend.config import get_settings
    from backend.runtime.celery_app import celery_config

    options = celery_config(get_settings().model_copy(update={"redis_url": "redis://x:1/0"}))
    transport = options["broker_transport_options"]
    assert transport["socket_timeout"] > 1 and transport["socket_connect_timeout"] > 0
