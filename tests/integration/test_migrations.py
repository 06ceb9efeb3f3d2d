"""Migrations up and down on SQLite and PostgreSQL, and no drift from the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from backend.core import migrations
from backend.core.database import get_db, get_engine, session_scope
from backend.core.models import ActionRow, Base, OpportunityRow, PolicyNumberRow
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
    resource = seed_resource()
    found = seed_opportunity(resource, id=7)  # the schema of 0003 has a sequence
    action_id = seed_old_action(opportunity_id=found)
    migrations.upgrade()
    migrations.downgrade(revision="0003")
    migrations.upgrade()
    with session_scope() as session:
        action = session.scalars(select(ActionRow)).one()
        opportunity = session.scalars(select(OpportunityRow)).one()
        assert action.id == action_id
        assert action.opportunity_id == opportunity.id  # renumbered by 0011, and followed
        assert opportunity.resource_pk == resource


def test_0011_renumbers_opportunities_and_the_actions_that_name_them(
    any_database: str,
) -> None:
    """Each id becomes resource_pk * 8192 + its policy's number; an action follows its
    opportunity; and the key keeps (policy, resource) unique, as the constraint it replaces
    did."""
    migrations.upgrade(revision="0010")
    volume, other = seed_resource(), seed_resource()
    ids = {
        ("unattached-ebs-delete", volume): seed_opportunity(volume, id=1),
        ("gp2-to-gp3", volume): seed_opportunity(volume, id=2, policy_name="gp2-to-gp3"),
        ("unattached-ebs-delete", other): seed_opportunity(other, id=8194),  # a new id's value
    }
    acting = seed_old_action(opportunity_id=ids[("gp2-to-gp3", volume)])
    migrations.upgrade()
    with session_scope() as session:
        numbers = dict(
            session.execute(select(PolicyNumberRow.policy_name, PolicyNumberRow.number)).all()
        )
        assert numbers == {"gp2-to-gp3": 1, "unattached-ebs-delete": 2}  # in name order
        kept = {
            (o.policy_name, o.resource_pk): o.id for o in session.scalars(select(OpportunityRow))
        }
        assert kept == {key: key[1] * 8192 + numbers[key[0]] for key in ids}
        action = session.get(ActionRow, acting)
        assert action is not None and action.opportunity_id == volume * 8192 + 1
    with pytest.raises(IntegrityError), session_scope() as session:
        session.add(OpportunityRow(policy_name="gp2-to-gp3", resource_pk=volume, action="x"))
    with pytest.raises(IntegrityError), session_scope() as session:  # a key not its resource's
        session.add(
            OpportunityRow(id=other * 8192 + 1, policy_name="x", resource_pk=volume, action="x")
        )
    migrations.downgrade(revision="0010")
    with session_scope() as session:
        session.execute(
            text(
                "INSERT INTO opportunities (policy_name, resource_pk, action, params, evidence,"
                " status, first_found, last_seen) VALUES ('late', :pk, 'delete', '{}', '{}',"
                " 'open', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"pk": volume},  # not the largest resource: its id passes no leftover check
        )
        late = session.scalar(text("SELECT id FROM opportunities WHERE policy_name = 'late'"))
        assert late is not None and late > max(kept.values())  # the sequence after them


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
