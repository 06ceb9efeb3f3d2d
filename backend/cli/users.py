"""`finops users ...`: API users and their tokens, from a terminal (the first administrator
is made here). Each change is audited with the operating-system user as actor."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from backend.cli.app import CommandError, app, console, handle_errors

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from backend.core.automation_audit_logger import AuditLogger

users_app = typer.Typer(help="API users and tokens: create, token, revoke, list.")
app.add_typer(users_app, name="users", no_args_is_help=True)
ROLES = "viewer, operator, approver or administrator"


@users_app.command("create")
@handle_errors
def create(
    name: Annotated[str, typer.Argument(help="User name (lower case).", show_default=False)],
    role: Annotated[str, typer.Option("--role", help=f"One of {ROLES}.", show_default=False)],
    with_password: Annotated[
        bool, typer.Option("--with-password", help="Ask for a password (dashboard sign-in).")
    ] = False,
) -> None:
    """Create a user with a role."""
    from backend.api.accounts import DuplicateUserError, create_user
    from backend.api.security import Role

    try:
        chosen = Role(role.strip().lower())
    except ValueError:
        raise typer.BadParameter(f"{role!r}: expected {ROLES}", param_hint="--role") from None
    password = (
        typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        if with_password
        else None
    )
    with _session() as (session, audit, actor):
        try:
            row = create_user(session, name, chosen, actor=actor, audit=audit, password=password)
        except (DuplicateUserError, ValueError) as exc:
            raise CommandError(str(exc), code=2) from None
        said = f"user {row.username} created with role {row.role}"
    # said once committed: a commit that fails (a full disk) created nobody
    console.print(said, highlight=False)


@users_app.command("token")
@handle_errors
def token(
    name: Annotated[str, typer.Argument(help="The user.", show_default=False)],
    expires_days: Annotated[
        int, typer.Option("--expires-days", min=1, max=3650, help="Days until it expires.")
    ] = 90,
    label: Annotated[str, typer.Option("--name", help="What the token is for.")] = "cli",
) -> None:
    """Issue an API token; it is printed once and only its hash is kept."""
    import datetime as dt

    from backend.api.accounts import AccessError, issue_token

    with _session() as (session, audit, actor):
        try:
            issued = issue_token(
                session,
                name,
                actor=actor,
                audit=audit,
                expires_in=dt.timedelta(days=expires_days),
                name=label,
            )
        except AccessError as exc:
            raise CommandError(str(exc), code=2) from None
    expires = issued.row.expires_at
    console.print(issued.token, highlight=False, markup=False, soft_wrap=True)
    typer.echo(
        f"token {issued.row.id} for {name}, expires {expires:%Y-%m-%d %H:%M}Z; "
        "shown once: store it now",
        err=True,
    )


@users_app.command("revoke")
@handle_errors
def revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id (`finops users list`).")],
) -> None:
    """Revoke an API token: it stops working at once."""
    from backend.api.accounts import UnknownTokenError, revoke_token

    with _session() as (session, audit, actor):
        try:
            row = revoke_token(session, token_id, actor=actor, audit=audit)
        except UnknownTokenError as exc:
            raise CommandError(str(exc), code=2) from None
        said = f"token {row.id} revoked at {row.revoked_at:%Y-%m-%d %H:%M}Z"
    # said once committed: a token reported revoked must not keep working
    console.print(said)


@users_app.command("list")
@handle_errors
def list_users() -> None:
    """Every user with its role, and every token with its state."""
    from backend.api.accounts import list_tokens
    from backend.api.accounts import list_users as users
    from backend.core.types import utcnow

    now = utcnow()
    with _session() as (session, _audit, _actor):
        table = Table(title="Users")
        for col in ("user", "role", "state", "password", "working tokens"):
            table.add_column(col)
        for user, live in users(session):
            state = "disabled" if user.disabled else "active"
            password = "yes" if user.password_hash else "no"
            table.add_row(user.username, user.role, state, password, str(live))
        console.print(table)
        tokens = Table(title="API tokens")
        for col in ("id", "user", "name", "expires", "state", "last used"):
            tokens.add_column(col)
        for row, username in list_tokens(session):
            if row.revoked_at is not None:
                state = "revoked"
            elif row.expires_at is not None and row.expires_at <= now:
                state = "expired"
            else:
                state = "working"
            expires = f"{row.expires_at:%Y-%m-%d}" if row.expires_at else "never"
            used = f"{row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never"
            tokens.add_row(str(row.id), username, row.name, expires, state, used)
        console.print(tokens)


@contextmanager
def _session() -> Iterator[tuple[Session, AuditLogger, str]]:
    """A migrated database's transaction, the audit log, and who is at the terminal."""
    from backend.core.auto_remediation_engine import default_actor
    from backend.core.automation_audit_logger import AuditLogger
    from backend.core.database import session_scope
    from backend.core.migrations import ensure_schema

    ensure_schema()
    with session_scope() as session:
        yield session, AuditLogger(), default_actor()
