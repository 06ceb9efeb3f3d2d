"""Migrations up and down on SQLite and PostgreSQL, and no drift from the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from backend.core import migrations
from backend.core.database import get_db, get_engine, session_scope
from backend.core.models import ActionRow, Base, OpportunityRow
from tests.support.api_client import (
    seed_action,
    seed_old_action,
    seed_opportunity,
    seed_resource,
)


def test_upgrade_then_downgrade_then_upgrade(any_database: str) -> None:
    migrations.upgrade()
    assert migrations.current_revision() == migrations.head_revision()
    tables = set(inspect(get_engine()).get_table_names())
    assert set(Base.metadata.tables) <= tables
    migrations.downgrade()
    assert migrations.current_revision() is None
    assert not set(Base.metadata.tables) & set(inspect(get_engine()).get_table_names())
    migrations.upgrade()
    assert migrations.current_revision() == migrations.head_revision()


def test_models_and_migrations_agree(any_database: str) -> None:
    migrations.upgrade()
    with get_engine().connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_get_db_answers_as_the_runbook_expects(any_database: str) -> None:
    session = get_db()
    assert session
    session.close()


def test_get_db_is_falsy_when_the_database_is_down(capsys) -> None:  # type: ignore[no-untyped-def]
    assert not get_db("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert "cannot use database" in capsys.readouterr().err


def test_0004_migrates_a_database_whose_opportunities_have_actions(any_database: str) -> None:
    """SQLite alters opportunities by copying the table; an action referencing one of its
    rows must neither stop that (SQLite refuses to drop a referenced table) nor lose it."""
    migrations.upgrade(revision="0003")
    found = seed_opportunity(seed_resource())
    action_id = seed_old_action(opportunity_id=found)
    migrations.upgrade()
    migrations.downgrade(revision="0003")
    migrations.upgrade()
    with session_scope() as session:
        action = session.scalars(select(ActionRow)).one()
        assert (action.id, action.opportunity_id) == (action_id, found)
        assert session.get(OpportunityRow, found) is not None


def test_0007_keeps_long_backups_and_refuses_to_downgrade_over_them(any_database: str) -> None:
    migrations.upgrade()
    config = "config:" + "x" * 5000  # a load balancer's saved configuration
    long_one = seed_action(backup_ref=config)
    migrations.downgrade(revision="0007")  # the later revisions first (SQLite commits each)
    with pytest.raises(RuntimeError, match=rf"cannot downgrade below 0007: actions \[{long_one}\]"):
        migrations.downgrade(revision="0006")
    assert migrations.current_revision() == "0007"
    migrations.upgrade()
    with session_scope() as session:
        kept = session.get(ActionRow, long_one)
        assert kept is not None and kept.backup_ref == config
