"""A command says it did something only once that is committed.

PostgreSQL refuses the commit here (a deferred constraint trigger, as a full disk or a lost
server would at that moment): the command must fail with the reason, and never print that
the user was created, the token revoked or the action approved; an emergency stop that
cannot be kept says why in one line."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner, Result

from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import ActionRow, ApiTokenRow, UserRow
from tests.support.api_client import seed_action, seed_opportunity, seed_resource

REFUSED = "could not extend file: No space left on device"


def finops(*args: str) -> Result:
    import backend.cli.actions
    import backend.cli.users  # noqa: F401
    from backend.cli.app import app, console, err

    console.width = err.width = 250
    return CliRunner().invoke(app, list(args))


def refuse_commits_on(table: str) -> None:
    with session_scope() as session:
        session.execute(
            text(
                "CREATE OR REPLACE FUNCTION finops_test_refuse() RETURNS trigger "
                f"LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{REFUSED}'; END $$"
            )
        )
        session.execute(
            text(
                f"CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT OR UPDATE ON {table} "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION finops_test_refuse()"
            )
        )


@pytest.fixture
def migrated_postgres(postgres_url: str) -> str:
    upgrade()
    return postgres_url


def test_a_user_is_not_said_created_when_the_commit_fails(migrated_postgres: str) -> None:
    refuse_commits_on("users")
    result = finops("users", "create", "bob", "--role", "viewer")
    assert result.exit_code == 3, result.output
    assert REFUSED in result.output and "created" not in result.output
    with session_scope() as session:
        assert session.scalars(select(UserRow)).all() == []


def test_a_token_is_not_said_revoked_when_the_commit_fails(migrated_postgres: str) -> None:
    assert finops("users", "create", "bob", "--role", "viewer").exit_code == 0
    assert finops("users", "token", "bob").exit_code == 0
    with session_scope() as session:
        token_id = session.scalars(select(ApiTokenRow.id)).one()
    refuse_commits_on("api_tokens")
    result = finops("users", "revoke", str(token_id))
    assert result.exit_code == 3, result.output
    assert REFUSED in result.output and "revoked" not in result.output
    with session_scope() as session:
        assert session.get(ApiTokenRow, token_id).revoked_at is None  # type: ignore[union-attr]


def test_an_action_is_not_said_approved_when_the_commit_fails(migrated_postgres: str) -> None:
    resource_pk = seed_resource(resource_id="vol-commit")
    action_id = seed_action(resource_id="vol-commit", opportunity_id=seed_opportunity(resource_pk))
    refuse_commits_on("actions")
    result = finops("actions", "approve", str(action_id), "--as", "alice")
    assert result.exit_code == 3, result.output
    assert REFUSED in result.output and "approved by" not in result.output
    with session_scope() as session:
        assert session.get(ActionRow, action_id).state == "awaiting_approval"  # type: ignore[union-attr]


def test_an_emergency_stop_that_cannot_be_kept_says_why_in_one_line(
    migrated_postgres: str,
) -> None:
    from backend.core.database import DatabaseUnavailableError
    from backend.core.emergency_stop import EmergencyStop

    refuse_commits_on("engine_state")
    with pytest.raises(DatabaseUnavailableError) as raised:
        EmergencyStop().engage("disk full", "oncall")
    said = str(raised.value)
    assert said.startswith("emergency stop not persisted: ") and REFUSED in said
    assert "\n" not in said and "sqlalche.me" not in said, said
