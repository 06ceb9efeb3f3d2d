"""`finops db ...` on a migration that refuses, a database newer than the code, and data a
downgrade would drop: one line and exit 3, never a traceback."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from typer.testing import CliRunner, Result

from backend.core import migrations
from backend.core.database import get_engine, session_scope
from backend.core.models import AuditEventRow, InventoryPartRow, ScanRunRow
from tests.support.api_client import seed_action


def finops(*args: str) -> Result:
    import backend.cli.db  # noqa: F401 - registers the commands
    from backend.cli.app import app, console, err

    console.width = err.width = 400  # one line stays one line
    return CliRunner().invoke(app, list(args))


def error_line(result: Result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_a_refused_downgrade_is_one_line(any_database: str) -> None:
    migrations.upgrade()
    long_one = seed_action(backup_ref="config:" + "x" * 600)
    result = finops("db", "downgrade", "0006")
    assert result.exit_code == 3
    assert error_line(result) == (
        f"database error: cannot downgrade below 0007: actions [{long_one}] keep backups longer "
        "than 512 characters (load balancer configurations) that 0006 cannot hold "
        f"(the database is at revision {migrations.head_revision()})"
    )


def test_an_unknown_target_revision_is_one_line(any_database: str) -> None:
    migrations.upgrade()
    result = finops("db", "upgrade", "0999")
    assert result.exit_code == 3
    assert "Can't locate revision identified by '0999'" in error_line(result)


def test_a_database_newer_than_the_code_is_said_so(any_database: str) -> None:
    migrations.upgrade()
    with get_engine().begin() as connection:  # migrated by a newer image
        connection.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    head = migrations.head_revision()
    advice = (
        f"database schema is at revision 0999, newer than this code's {head}, and its "
        "migrations do not allow code this old to run on it: deploy the image that has it (to "
        f"go back, run `finops db downgrade {head}` with that newer image)"
    )
    for command in (["upgrade"], ["downgrade", "0006"]):
        result = finops("db", *command)
        assert (result.exit_code, error_line(result)) == (3, f"database error: {advice}")
    with pytest.raises(migrations.SchemaOutOfDateError) as raised:
        migrations.ensure_schema()  # every command's entry, embedded (migrates) or server
    assert str(raised.value) == advice


def test_a_database_behind_the_code_is_told_to_upgrade(postgres_url: str) -> None:
    migrations.upgrade(revision="0005")
    with pytest.raises(
        migrations.SchemaOutOfDateError,
        match=r"at revision 0005, the code needs .*: run `finops db upgrade`$",
    ):
        migrations.ensure_schema()


def seed_inventory_part() -> None:
    with session_scope() as session:
        scan = ScanRunRow(status="succeeded")
        session.add(scan)
        session.flush()
        session.add(
            InventoryPartRow(
                account_id="123456789012", region="us-east-1", kind="ebs", scan_id=scan.id
            )
        )


def test_a_downgrade_that_would_drop_rows_needs_force(any_database: str) -> None:
    migrations.upgrade()
    seed_inventory_part()  # 0006's table
    result = finops("db", "downgrade", "0005")
    assert result.exit_code == 3
    assert error_line(result) == (
        "database error: refusing to downgrade to 0005: it would drop inventory_parts (1 rows); "
        "back them up, then pass --force to drop them"
    )
    assert migrations.current_revision() == migrations.head_revision()
    result = finops("db", "downgrade", "0005", "--force")
    assert result.exit_code == 0, result.output
    assert migrations.current_revision() == "0005"


def test_a_downgrade_never_drops_a_non_empty_audit_trail(any_database: str) -> None:
    migrations.upgrade()
    with session_scope() as session:
        session.add(
            AuditEventRow(
                actor="a",
                event_type="x",
                subject_type="s",
                subject_id="1",
                outcome="ok",
                prev_hash="0" * 64,
                hash="1" * 64,
            )
        )
    seed_inventory_part()
    for force in ([], ["--force"]):
        result = finops("db", "downgrade", "base", *force)
        assert result.exit_code == 3
        line = error_line(result)
        assert "drop audit_events (1 rows), inventory_parts (1 rows), scan_runs (1 rows);" in line
        assert "never dropped while it has rows, --force or not" in line
    assert migrations.current_revision() == migrations.head_revision()
    with session_scope() as session:
        assert session.query(AuditEventRow).count() == 1
