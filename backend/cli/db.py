"""`finops db ...`: migrations."""

from __future__ import annotations

import typer

from backend.cli.app import console, db_app, handle_errors
from backend.core import migrations
from backend.core.database import check_database, database_url, redacted


@db_app.command("upgrade")
@handle_errors
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Migrate the database (DATABASE_URL, or the embedded SQLite) up to REVISION."""
    check_database()
    migrations.upgrade(revision=revision)
    console.print(
        f"database {redacted(database_url())} at revision {migrations.current_revision()}"
    )


@db_app.command("downgrade")
@handle_errors
def downgrade(
    revision: str = typer.Argument(..., help="Target revision, or 'base'."),
    force: bool = typer.Option(
        False, "--force", help="Drop tables that have rows (never a non-empty audit_events)."
    ),
) -> None:
    """Migrate the database down to REVISION. Refuses to drop a table that has rows unless
    --force is given, and to drop a non-empty audit_events at all."""
    check_database()
    migrations.downgrade(revision=revision, force=force)
    console.print(f"database at revision {migrations.current_revision() or 'base'}")


@db_app.command("current")
@handle_errors
def current() -> None:
    """Print the database's revision and the code's."""
    check_database()
    console.print(
        f"database {migrations.current_revision() or 'none'}, code {migrations.head_revision()}"
    )
