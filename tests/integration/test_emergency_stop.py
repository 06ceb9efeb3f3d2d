"""The emergency stop on SQLite and PostgreSQL: persisted, fail-closed, admin-only, audited."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis
from sqlalchemy import select, text
from typer.testing import CliRunner, Result

from backend.config import reset_settings_cache
from backend.core import migrations
from backend.core.audit_chain import AuditEvent, EventType
from backend.core.auto_remediation_engine import AutoRemediationEngine, InProcessDispatcher
from backend.core.automation_audit_logger import AuditLogError, AuditLogger
from backend.core.database import (
    DatabaseUnavailableError,
    dispose_engines,
    get_engine,
    session_scope,
)
from backend.core.emergency_stop import EmergencyStop, EmergencyStopEngaged
from backend.core.models import EngineStateRow
from backend.core.safety_checker import SafetyChecker
from backend.core.stop_fast_path import STOP_KEY
from tests.support.servers import free_port
from tests.support.workers import RUNTIME_REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
STOP_EVENTS = frozenset({EventType.EMERGENCY_STOP, EventType.EMERGENCY_RESUME})


class RecordingNotifier:
    def __init__(self, fail: bool = False) -> None:
        self.texts: list[str] = []
        self.fail = fail

    def send_emergency_alert(self, text: str) -> list[str]:
        self.texts.append(text)
        if self.fail:
            raise ConnectionError("slack is down")
        return []


class Signal:
    def __init__(self, engaged: bool | None) -> None:
        self.engaged = engaged

    def is_engaged(self) -> bool:
        if self.engaged is None:
            raise TimeoutError("redis timed out")
        return self.engaged

    def mirror(self, engaged: bool, reason: str | None) -> None:
        self.engaged = engaged


@pytest.fixture
def db(any_database: str) -> str:
    migrations.upgrade()
    return any_database


def stop_events() -> list[AuditEvent]:
    return AuditLogger().events("7d", event_types=STOP_EVENTS)


def test_engage_persists_across_instances_and_engines(db: str) -> None:
    notifier = RecordingNotifier()
    assert not EmergencyStop().is_engaged()
    first = EmergencyStop(notifier=notifier).engage("prod volume deleted", "alice")
    assert (first.engaged, first.reason, first.engaged_by) == (True, "prod volume deleted", "alice")
    assert first.audit_error is None and first.alert_error is None

    dispose_engines()  # as after a restart: new engine, new instance
    again = EmergencyStop(notifier=notifier).engage("still bad", "bob")
    assert (again.reason, again.engaged_by, again.engaged_at) == (
        "prod volume deleted",
        "alice",
        first.engaged_at,
    )
    dispose_engines()
    assert EmergencyStop().state() == EmergencyStop().state()
    assert EmergencyStop().is_engaged()
    assert [(e.actor, e.outcome, e.details["reason"]) for e in stop_events()] == [
        ("alice", "engaged", "prod volume deleted"),
        ("bob", "already_engaged", "still bad"),
    ]
    assert AuditLogger().verify().ok
    assert "alice: prod volume deleted" in notifier.texts[0]
    assert "already engaged since" in notifier.texts[1]


@pytest.mark.parametrize(
    "reason",
    ["disk filling\x00", "caf\udce9 outage"],  # NUL; a Latin-1 terminal's byte, undecoded
)
def test_no_character_in_the_reason_keeps_the_brake_off(db: str, reason: str) -> None:
    """PostgreSQL text refuses NUL, and no UTF-8 holds a lone surrogate: the stop engages
    with each replaced by U+FFFD, audited, and the alert goes out."""
    notifier = RecordingNotifier()
    engaged = EmergencyStop(notifier=notifier).engage(reason, "oncall")
    assert engaged.engaged and "\ufffd" in str(engaged.reason)
    assert engaged.audit_error is None and len(notifier.texts) == 1
    assert EmergencyStop().is_engaged()
    assert AuditLogger().verify().ok


def test_check_raises_with_reason_who_and_when(db: str) -> None:
    stop = EmergencyStop(notifier=RecordingNotifier())
    stop.check("claim 1")  # not engaged: passes
    stop.engage("runaway deletes", "alice")
    with pytest.raises(EmergencyStopEngaged) as caught:
        stop.check("ec2.terminate_instances i-123")
    message = str(caught.value)
    assert "runaway deletes" in message and "alice" in message
    assert "terminate_instances i-123" in message
    assert caught.value.state is not None and caught.value.state.engaged_at is not None
    assert f"{caught.value.state.engaged_at:%Y-%m-%d %H:%M}" in message


def test_release_is_admin_only_and_audited(db: str) -> None:
    stop = EmergencyStop(notifier=RecordingNotifier())
    stop.engage("investigating", "alice")
    with pytest.raises(PermissionError):
        stop.release("mallory", is_admin=False)
    assert stop.is_engaged()
    released = stop.release("root", is_admin=True)
    assert (released.engaged, released.released_by) == (False, "root")
    assert released.reason == "investigating"  # kept as the last engagement's history
    stop.check("claim")
    assert [(e.event_type, e.actor, e.outcome) for e in stop_events()] == [
        ("emergency_stop", "alice", "engaged"),
        ("emergency_resume", "mallory", "refused"),
        ("emergency_resume", "root", "released"),
    ]
    # Engaging after a release starts a new engagement.
    again = stop.engage("again", "carol")
    assert (again.engaged_by, again.released_by) == ("carol", None)


def test_engage_without_audit_log_still_engages_and_says_so(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with get_engine().begin() as connection:
        connection.execute(text("DROP TABLE audit_events"))
    notifier = RecordingNotifier()
    result = EmergencyStop(notifier=notifier).engage("audit db broken", "alice")
    assert result.engaged
    assert result.audit_error is not None and "audit_events" in result.audit_error
    assert "audit event NOT written" in capsys.readouterr().err
    assert "AUDIT EVENT NOT WRITTEN" in notifier.texts[0]
    dispose_engines()
    assert EmergencyStop().state().reason == "audit db broken"
    # Lifting the brake is not urgent: without its audit event it does not happen.
    with pytest.raises(AuditLogError):
        EmergencyStop().release("root", is_admin=True)
    assert EmergencyStop().is_engaged()


def test_alert_failure_never_undoes_the_stop(db: str) -> None:
    result = EmergencyStop(notifier=RecordingNotifier(fail=True)).engage("why", "alice")
    assert result.engaged and result.alert_error == "ConnectionError: slack is down"
    assert EmergencyStop().is_engaged()


def test_concurrent_engages_make_one_engagement(db: str) -> None:
    results: list[str] = []

    def engage(n: int) -> None:
        state = EmergencyStop(notifier=RecordingNotifier()).engage(f"reason {n}", f"user{n}")
        results.append(f"{state.engaged_by}")

    threads = [threading.Thread(target=engage, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1  # everyone sees the first engagement
    outcomes = sorted(e.outcome for e in stop_events())
    assert outcomes == ["already_engaged"] * 3 + ["engaged"]
    assert AuditLogger().verify().ok
    with session_scope() as session:
        assert len(session.scalars(select(EngineStateRow)).all()) == 1


def test_fast_path_can_add_a_stop_but_never_lift_one(db: str) -> None:
    assert EmergencyStop(fast_path=Signal(True)).is_engaged()
    with pytest.raises(EmergencyStopEngaged, match="fast path"):
        EmergencyStop(fast_path=Signal(True)).check("claim")
    assert not EmergencyStop(fast_path=Signal(None)).is_engaged()  # broken: database decides
    EmergencyStop(notifier=RecordingNotifier()).engage("why", "alice")
    assert EmergencyStop(fast_path=Signal(False)).is_engaged()


def test_unreachable_database_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/x")
    reset_settings_cache()
    notifier = RecordingNotifier()
    stop = EmergencyStop(notifier=notifier)
    assert stop.is_engaged()
    with pytest.raises(EmergencyStopEngaged, match="unreadable, failing closed"):
        stop.check("claim 7")
    with pytest.raises(DatabaseUnavailableError, match="not persisted"):
        stop.engage("db down", "alice")
    assert "could NOT be persisted" in notifier.texts[0]  # the alert goes out anyway


def test_missing_table_fails_closed(db: str) -> None:
    with get_engine().begin() as connection:
        connection.execute(text("DROP TABLE engine_state"))
    assert EmergencyStop().is_engaged()
    with pytest.raises(EmergencyStopEngaged, match="failing closed"):
        EmergencyStop().check()


# -- the CLI ---------------------------------------------------------------------------------


def finops(*args: str) -> Result:
    import backend.cli.emergency  # noqa: F401 - registers the commands
    from backend.cli.app import app, console, err

    console.width = err.width = 250  # no table cell wraps, whatever the terminal
    return CliRunner().invoke(app, list(args))


def test_cli_engage_and_resume(db: str) -> None:
    engaged = finops("emergency-stop", "--reason", "mass deletion", "--actor", "alice")
    assert engaged.exit_code == 0, engaged.output
    assert "EMERGENCY STOP ENGAGED by alice" in engaged.output
    assert "mass deletion" in engaged.output

    refused = finops("resume", "--actor", "bob")
    assert refused.exit_code == 1
    assert "not an administrator" in refused.output
    assert EmergencyStop().is_engaged()

    resumed = finops("resume", "--actor", "root", "--i-am-admin")
    assert resumed.exit_code == 0, resumed.output
    assert "released by root" in resumed.output
    assert not EmergencyStop().is_engaged()
    outcomes = [e.outcome for e in stop_events()]
    assert outcomes == ["engaged", "refused", "released"]


def test_cli_requires_a_reason(db: str) -> None:
    assert finops("emergency-stop").exit_code == 2
    blank = finops("emergency-stop", "--reason", "  ")
    assert blank.exit_code == 2 and "must not be empty" in blank.output
    assert not EmergencyStop().is_engaged()


def test_cli_migrates_embedded_sqlite() -> None:
    result = finops("emergency-stop", "--reason", "first run")
    assert result.exit_code == 0, result.output
    assert EmergencyStop().state().engaged_by  # user@host by default
    assert "--i-am-admin" in finops("resume", "--help").output


def test_a_stop_key_left_in_redis_is_reported_and_resume_says_it_was_not_cleared(
    db: str, broker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`finops resume` from a process that cannot reach Redis: the database is released,
    the key stays and check() refuses everything on it. Resume exits 1 and says so, and
    every status reader says stopped, not running, until a resume clears the key."""
    assert finops("emergency-stop", "--reason", "incident 7", "--actor", "oncall").exit_code == 0
    assert broker.get(STOP_KEY) == b"incident 7"
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing there
    reset_settings_cache()
    resumed = finops("resume", "--actor", "admin1", "--i-am-admin")
    assert resumed.exit_code == 1, resumed.output
    assert "could NOT be cleared" in resumed.output and "finops resume" in resumed.output
    assert "running" not in resumed.output

    monkeypatch.setenv("REDIS_URL", RUNTIME_REDIS_URL)
    reset_settings_cache()
    assert broker.get(STOP_KEY) == b"incident 7"
    state = EmergencyStop().state()
    assert (state.engaged, state.stop_key_left, state.stops) == (False, True, True)
    assert "key left in Redis" in state.describe()
    with pytest.raises(EmergencyStopEngaged, match="fast path"):
        EmergencyStop().check("claim")  # still fail-closed on the key
    status = AutoRemediationEngine(dispatcher=InProcessDispatcher()).get_status()
    assert status.state == "stopped (emergency stop key left in Redis)"
    assert "key left in Redis" in status.emergency_stop
    assert "emergency stop: STOPPED: emergency stop key left in Redis" in str(
        SafetyChecker().system_status()
    )
    health = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "health-check.py"), "--exit-code"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert health.returncode == 1
    assert "FAIL emergency stop: STOPPED: emergency stop key left in Redis" in health.stdout

    again = finops("resume", "--actor", "admin1", "--i-am-admin")
    assert again.exit_code == 0, again.output
    assert broker.get(STOP_KEY) is None
    assert not EmergencyStop().state().stops
    assert AutoRemediationEngine(dispatcher=InProcessDispatcher()).get_status().state != (
        "stopped (emergency stop key left in Redis)"
    )
