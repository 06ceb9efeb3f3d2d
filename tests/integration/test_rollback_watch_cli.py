"""`finops rollback-watch`: a check that fails is said and audited, and the watch goes on."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import backend.cli.rollback_watch  # noqa: F401 - registers the command
from backend.cli.app import app
from backend.config import reset_settings_cache
from backend.core.automation_audit_logger import AuditLogger
from backend.core.rollback_triggers import RollbackTriggers, TriggerResult


class _StopWatchingError(Exception):
    """Ends the otherwise endless watch loop from inside time.sleep."""


@pytest.fixture(autouse=True)
def database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'watch.sqlite'}")
    reset_settings_cache()


def failed_checks() -> list[str]:
    return [
        str(e.details["error"])
        for e in AuditLogger().events("1h", event_types=frozenset({"rollback"}))
        if e.subject_type == "rollback-watch" and e.outcome == "check failed"
    ]


def test_a_failed_check_is_audited_and_the_next_interval_still_checks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: list[Exception | list[TriggerResult]] = [RuntimeError("account 2 offboarded"), []]
    checked: list[str] = []

    def check(self: RollbackTriggers) -> list[TriggerResult]:
        answer = answers.pop(0)
        checked.append(type(answer).__name__)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sleep(_: float) -> None:
        if not answers:
            raise _StopWatchingError
        checked.append("slept")

    monkeypatch.setattr(RollbackTriggers, "check", check)
    monkeypatch.setattr("backend.cli.rollback_watch.time.sleep", sleep)

    done = CliRunner().invoke(app, ["rollback-watch", "--interval", "10"])

    assert isinstance(done.exception, _StopWatchingError), done.output  # still watching, not dead
    assert checked == ["RuntimeError", "slept", "list"]
    assert "rollback check failed: RuntimeError: account 2 offboarded" in done.output
    assert "no rollback trigger fired" in done.output
    assert failed_checks() == ["RuntimeError: account 2 offboarded"]


def test_a_failed_check_with_once_exits_non_zero_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def check(self: RollbackTriggers) -> list[TriggerResult]:
        raise RuntimeError("breaker open")

    monkeypatch.setattr(RollbackTriggers, "check", check)

    done = CliRunner().invoke(app, ["rollback-watch", "--once"])

    assert done.exit_code == 1
    assert done.exception is None or isinstance(done.exception, SystemExit)
    assert "rollback check failed: RuntimeError: breaker open" in done.output
    assert failed_checks() == ["RuntimeError: breaker open"]
