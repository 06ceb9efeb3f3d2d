"""A release meets a schema a newer release migrated: the rollback of an image, or a pod of
the previous release during a rolling update. It starts when the newer migrations said its
code may run on their schema, and refuses, saying what to do, when they did not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from backend.core import migrations
from tests.integration.test_migration_safety import ROOT, finops

FUTURE = '''"""a release after this one

Revision ID: {future}
Revises: {head}
"""

import sqlalchemy as sa
from alembic import op

revision = "{future}"
down_revision = "{head}"
branch_labels = None
depends_on = None
older_code_compatible = {compatible}


def upgrade() -> None:
    op.add_column("actions", sa.Column("future_note", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("actions") as batch:
        batch.drop_column("future_note")
'''


def next_revision() -> str:
    """The revision a release after this one would add."""
    head = migrations.head_revision()
    assert head is not None
    return f"{int(head) + 1:04d}"


def migrate_with_a_newer_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, compatible: bool
) -> str:
    """Upgrade the database with this project's migrations and one more, as the next release
    would; then this release is the one in use again. The newer revision."""
    head, future = migrations.head_revision(), next_revision()
    migrations.upgrade()
    root = tmp_path / "next-release"
    root.mkdir()
    shutil.copy(ROOT / "alembic.ini", root)
    shutil.copytree(
        ROOT / "migrations", root / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )
    text = FUTURE.format(head=head, future=future, compatible=compatible)
    (root / "migrations" / "versions" / f"{future}_future.py").write_text(text)
    with monkeypatch.context() as next_release:
        next_release.setenv("FINOPS_MIGRATIONS_DIR", str(root / "migrations"))
        migrations.upgrade()
        assert migrations.current_revision() == future
    assert migrations.head_revision() == head
    return future


def test_a_release_starts_on_a_newer_schema_its_migrations_allow(
    any_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    future = migrate_with_a_newer_release(tmp_path, monkeypatch, compatible=True)
    # 0011 does not let the code of 0010 run on its schema; the newer one lets 0011's run
    assert migrations.oldest_code_allowed(any_database, future) == "0011"
    with capture_logs() as logs:
        migrations.ensure_schema()  # every command's entry: starts
        migrations.upgrade()  # nothing to do: the newer schema is left as it is
    assert migrations.current_revision() == future
    said = [e for e in logs if e["event"].startswith("database schema is newer")]
    assert said and said[0]["database_revision"] == future, logs
    assert finops("db", "upgrade").exit_code == 0
    # going back below it is the newer release's to do: this one does not know it
    refused = finops("db", "downgrade", "0010")
    assert refused.exit_code == 3 and "newer than this code's" in refused.output


def test_a_release_refuses_a_newer_schema_its_migrations_do_not_allow(
    any_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    future = migrate_with_a_newer_release(tmp_path, monkeypatch, compatible=False)
    assert migrations.oldest_code_allowed(any_database, future) == future
    with pytest.raises(migrations.SchemaOutOfDateError, match="do not allow code this old"):
        migrations.ensure_schema()
    result = finops("db", "upgrade")
    assert result.exit_code == 3 and "deploy the image that has it" in result.output


def test_each_revision_records_the_oldest_code_that_may_run_on_it(any_database: str) -> None:
    migrations.upgrade()
    head = migrations.head_revision()
    assert head is not None
    # 0011 keys opportunities as the code of 0010 does not know: nothing older may run
    assert migrations.oldest_code_allowed(any_database, head) == "0011"
    migrations.downgrade(revision="0010")
    # 0009 only adds a table older code never reads, and 0010 triggers that only notify:
    # the code of 0008 may run on either
    assert migrations.oldest_code_allowed(any_database, "0010") == "0008"
    migrations.downgrade(revision="0008")
    assert migrations.current_revision() == "0008"
    migrations.upgrade()
    assert migrations.oldest_code_allowed(any_database, head) == "0011"
