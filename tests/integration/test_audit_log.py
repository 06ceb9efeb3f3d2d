"""The audit log on SQLite and PostgreSQL: the chain holds, tampering shows, audit comes first."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, text, update
from typer.testing import CliRunner

from backend.core import migrations
from backend.core.audit_chain import AuditEvent, EventType, verify_events
from backend.core.automation_audit_logger import AuditLogError, AuditLogger
from backend.core.database import get_engine, session_scope
from backend.core.models import AuditEventRow, EngineStateRow
from backend.core.types import utcnow


@pytest.fixture
def logger(any_database: str) -> AuditLogger:
    migrations.upgrade()
    return AuditLogger()


def write(logger: AuditLogger, count: int, **overrides: Any) -> None:
    for i in range(count):
        fields: dict[str, Any] = {
            "subject_type": "action",
            "subject_id": str(i),
            "actor": "engine",
            "outcome": "ok",
            "details": {"n": i},
        }
        logger.log(overrides.get("event_type", EventType.EXECUTION), **fields)


def sql(statement: Any) -> None:
    with get_engine().begin() as connection:
        connection.execute(statement)


def event_count() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEventRow)) or 0)


def test_chain_verifies_after_many_events_written_both_ways(logger: AuditLogger) -> None:
    write(logger, 30)
    for i in range(30):
        with session_scope() as session:
            session.merge(EngineStateRow(id=1, emergency_stop=bool(i % 2)))
            logger.record(
                EventType.CONFIG_CHANGE,
                subject_type="engine",
                subject_id=1,
                actor="admin",
                outcome="ok",
                details={"i": i, "when": utcnow(), "big": 1e100, "neg0": -0.0, "txt": "é\x00"},
                session=session,
            )
    report = logger.verify()
    assert report.ok, report
    assert (report.checked, report.head_id) == (60, 60)


def test_edited_row_is_named(logger: AuditLogger) -> None:
    write(logger, 10)
    sql(update(AuditEventRow).where(AuditEventRow.id == 7).values(details={"n": 999}))
    report = logger.verify()
    assert not report.ok
    assert (report.first_broken_id, report.reason) == (7, "hash mismatch (row edited)")


def test_deleted_middle_row_is_named(logger: AuditLogger) -> None:
    write(logger, 10)
    sql(delete(AuditEventRow).where(AuditEventRow.id == 5))
    report = logger.verify()
    assert not report.ok
    assert report.first_broken_id == 6
    assert report.reason is not None
    assert report.reason.startswith("id gap after 4 (row deleted)")
    assert "event 5 missing" in report.reason


def test_a_window_notices_its_own_first_event_deleted(logger: AuditLogger) -> None:
    """verify(last=3) over events 8..10 (the runbook's probe checks the last 100)."""
    write(logger, 10)
    sql(delete(AuditEventRow).where(AuditEventRow.id == 8))
    report = logger.verify(last=3)
    assert not report.ok
    assert report.reason is not None and "event 8 missing" in report.reason
    assert logger.verify(last=2).ok  # 9..10 are intact


@pytest.mark.parametrize("how", ["log", "record"])
def test_deleted_last_row_is_named(logger: AuditLogger, how: str) -> None:
    if how == "log":
        write(logger, 10)
    else:
        for i in range(10):
            with session_scope() as session:
                logger.record(
                    "approval",
                    subject_type="action",
                    subject_id=i,
                    actor="a",
                    outcome="ok",
                    session=session,
                )
    sql(delete(AuditEventRow).where(AuditEventRow.id == 10))
    report = logger.verify()
    assert not report.ok
    assert report.first_broken_id == 10
    assert "id gap after 9 (row deleted)" in (report.reason or "")
    # The next writer reuses id 10; the anchored hash still exposes the deletion.
    write(logger, 1)
    again = logger.verify()
    assert (again.ok, again.first_broken_id) == (False, 10)


def test_swapped_rows_read_as_reordered(logger: AuditLogger) -> None:
    write(logger, 6)
    sql(text("UPDATE audit_events SET id = -3 WHERE id = 3"))
    sql(text("UPDATE audit_events SET id = 3 WHERE id = 4"))
    sql(text("UPDATE audit_events SET id = 4 WHERE id = -3"))
    report = logger.verify()
    assert not report.ok
    assert report.first_broken_id == 3
    assert report.reason == "prev_hash does not match previous event (row deleted or reordered)"


def _record_then_fail(logger: AuditLogger) -> None:
    with session_scope() as session:
        logger.record(
            "execution", subject_type="a", subject_id=1, actor="x", outcome="ok", session=session
        )
        raise RuntimeError("state change failed")


def test_rolled_back_record_leaves_no_event_and_no_broken_chain(logger: AuditLogger) -> None:
    write(logger, 3)
    with pytest.raises(RuntimeError, match="state change failed"):
        _record_then_fail(logger)
    with session_scope() as session, session.begin_nested() as savepoint:
        logger.record(
            "rollback", subject_type="a", subject_id=2, actor="x", outcome="ok", session=session
        )
        savepoint.rollback()
    assert event_count() == 3
    assert logger.verify().ok
    write(logger, 2)
    report = logger.verify()
    assert (report.ok, report.head_id) == (True, 5)


def _stop_engine_with_audit(logger: AuditLogger) -> None:
    with session_scope() as session:
        session.add(EngineStateRow(id=1, emergency_stop=True))
        session.flush()
        logger.record(
            "emergency_stop",
            subject_type="engine",
            subject_id=1,
            actor="x",
            outcome="ok",
            session=session,
        )


def test_audit_first_a_failed_audit_insert_fails_the_state_change(logger: AuditLogger) -> None:
    sql(text("DROP TABLE audit_events"))
    with pytest.raises(AuditLogError, match="audit event not written"):
        _stop_engine_with_audit(logger)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(EngineStateRow)) == 0


def test_concurrent_writers_never_fork_the_chain(logger: AuditLogger) -> None:
    threads, per_thread = 8, 15
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                if i % 2:
                    logger.log(
                        "scan", subject_type="t", subject_id=f"{n}-{i}", actor=f"w{n}", outcome="ok"
                    )
                    continue
                with session_scope() as session:
                    logger.record(
                        "execution",
                        subject_type="t",
                        subject_id=f"{n}-{i}",
                        actor=f"w{n}",
                        outcome="ok",
                        session=session,
                    )
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    report = logger.verify()
    assert report.ok, report
    assert report.checked == threads * per_thread
    with session_scope() as session:
        prevs = session.scalars(select(AuditEventRow.prev_hash)).all()
    assert len(set(prevs)) == len(prevs)  # no two events claim the same parent


def test_get_recent_actions_window_and_echo(
    logger: AuditLogger, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert logger.get_recent_actions(hours=1) == []
    assert "no action events in the last 1h" in capsys.readouterr().out
    old = utcnow() - dt.timedelta(hours=3)
    monkeypatch.setattr("backend.core.automation_audit_logger.utcnow", lambda: old)
    logger.log("execution", subject_type="action", subject_id="old", actor="e", outcome="ok")
    monkeypatch.undo()
    logger.log("scan", subject_type="scan", subject_id="1", actor="e", outcome="ok")
    logger.log(
        "approval", subject_type="action", subject_id="42", actor="alice", outcome="approved"
    )
    logger.log(
        "execution",
        subject_type="action",
        subject_id="42",
        actor="engine",
        outcome="succeeded",
        details={"resource": "vol-1"},
    )
    found = logger.get_recent_actions(hours=1)
    assert [(e["event_type"], e["subject_id"]) for e in found] == [
        ("approval", "42"),
        ("execution", "42"),
    ]
    out = capsys.readouterr().out
    assert "2 action event(s) in the last 1h" in out
    assert "alice" in out and "action:42" in out and 'resource="vol-1"' in out
    assert "scan:1" not in out and "action:old" not in out
    assert len(logger.get_recent_actions(hours=4)) == 3


def test_test_logging_ok(logger: AuditLogger) -> None:
    write(logger, 120)
    message = logger.test_logging()
    assert message == (
        "audit logging OK: wrote and read back event 121 (chain verified over last 100 events)"
    )


def test_test_logging_fails_without_the_table(any_database: str) -> None:
    message = AuditLogger().test_logging()
    assert message.startswith("audit logging FAILED: table audit_events missing")


def test_test_logging_fails_when_the_database_is_down() -> None:
    message = AuditLogger(database_url="postgresql://nobody@127.0.0.1:1/none").test_logging()
    assert message.startswith("audit logging FAILED: database unreachable:")


def test_test_logging_names_a_broken_chain(logger: AuditLogger) -> None:
    write(logger, 5)
    sql(update(AuditEventRow).where(AuditEventRow.id == 4).values(actor="mallory"))
    message = logger.test_logging()
    assert message.startswith("audit logging FAILED: wrote event 6 but the chain is broken")
    assert "event 4" in message


def test_export_and_timeline(logger: AuditLogger) -> None:
    write(logger, 4)
    import io

    buffer = io.StringIO()
    assert logger.export_jsonl("1h", stream=buffer) == 4
    rows = [json.loads(line) for line in buffer.getvalue().splitlines()]
    events = [
        AuditEvent(**(r | {"occurred_at": dt.datetime.fromisoformat(r["occurred_at"])}))
        for r in rows
    ]
    assert verify_events(events).ok  # an export can be checked on its own
    lines = logger.timeline(utcnow() - dt.timedelta(minutes=5))
    assert len(lines) == 4 and lines[0].startswith("#1 ")
    assert logger.timeline("1h", until=utcnow() - dt.timedelta(hours=1)) == []


def _cli(*args: str) -> Any:
    import backend.cli.audit  # noqa: F401 - registers the group
    from backend.cli.app import app, console, err

    console.width = err.width = 250  # no table cell wraps, whatever the terminal
    return CliRunner().invoke(app, list(args))


def test_cli_verify_export_timeline(logger: AuditLogger, tmp_path: Path) -> None:
    write(logger, 5)
    result = _cli("audit", "verify")
    assert result.exit_code == 0, result.output
    assert "audit chain OK: 5 event(s) checked" in result.output

    out = tmp_path / "audit.jsonl"
    result = _cli("audit", "export", "--since", "2020-01-01T00:00:00Z", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [1, 2, 3, 4, 5]
    result = _cli("audit", "export", "--since", "24h")
    assert result.exit_code == 0 and result.output.count("\n") == 5

    result = _cli("audit", "timeline", "--since", "24h")
    assert result.exit_code == 0 and "execution" in result.output

    sql(delete(AuditEventRow).where(AuditEventRow.id == 3))
    result = _cli("audit", "verify")
    assert result.exit_code == 1
    assert "BROKEN at event 4" in result.output and "id gap after 2" in result.output


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--since", "yesterday"], "--since"),
        (["--since", "24h", "--until", "nope"], "--until"),
        (["--since", "1h", "--until", "2h"], "--until"),
    ],
)
def test_cli_rejects_bad_times_naming_the_option(
    logger: AuditLogger, args: list[str], option: str
) -> None:
    result = _cli("audit", "timeline", *args)
    assert result.exit_code == 2
    assert option in result.output
