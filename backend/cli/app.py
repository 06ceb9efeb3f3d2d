"""The Typer application and the error handling every command shares."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console

from backend.config import Settings, SettingsError, get_settings

app = typer.Typer(
    name="finops",
    help="Find AWS waste and remove it, safely. Dry-run unless told otherwise.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The database: migrations.", no_args_is_help=True)
policy_app = typer.Typer(
    help="Policies: validate, list, sync, enable, disable, pause.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(policy_app, name="policy")

console = Console()
err = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


class CommandError(Exception):
    """A problem to print as one clear line, then exit with `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Known failures print what is wrong and how to fix it, never a traceback."""
    from sqlalchemy.exc import DatabaseError, DataError, InterfaceError

    from backend.core.database import DatabaseUnavailableError, error_cause
    from backend.core.migrations import SchemaOutOfDateError

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except SettingsError as exc:
            err.print(f"[red]configuration error[/red]\n{exc}", highlight=False)
            raise typer.Exit(2) from None
        except (DatabaseUnavailableError, SchemaOutOfDateError) as exc:
            err.print(f"[red]database error:[/red] {exc}", highlight=False)
            raise typer.Exit(3) from None
        except DataError as exc:  # an id past the column's range, a NUL: the input's fault
            cause = error_cause(exc)
            err.print(f"[red]error:[/red] the database refused a value given: {cause}")
            raise typer.Exit(2) from None
        except (DatabaseError, InterfaceError) as exc:  # unreachable, or not a database at all
            where = _database_named()
            err.print(f"[red]database error:[/red] {where}{error_cause(exc)}", highlight=False)
            raise typer.Exit(3) from None
        except CommandError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(exc.code) from None
        except OSError as exc:
            if exc.filename is None:
                raise  # not a path's fault: the traceback is the useful report
            cause = exc.strerror or type(exc).__name__
            err.print(f"[red]error:[/red] cannot use {exc.filename}: {cause}", highlight=False)
            raise typer.Exit(3) from None
        except OverflowError as exc:  # a date or a duration past what can be computed
            err.print(f"[red]error:[/red] a number or date given is out of range ({exc})")
            raise typer.Exit(2) from None
        except Exception as exc:  # AWS credentials; anything else keeps its traceback
            problem = _aws_credentials_problem(exc)
            if problem is None:
                raise
            err.print(f"[red]AWS credentials:[/red] {problem}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def _aws_credentials_problem(exc: Exception) -> str | None:
    """The line to print for no or bad AWS credentials (a profile that is not there), or
    None for any other error. botocore is imported only when it raised."""
    if not type(exc).__module__.startswith("botocore"):
        return None
    from botocore.exceptions import (
        CredentialRetrievalError,
        NoCredentialsError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    credentials = (CredentialRetrievalError, NoCredentialsError, PartialCredentialsError)
    if not isinstance(exc, (*credentials, ProfileNotFound)):
        return None
    return (
        f"{exc} (set AWS_PROFILE to a profile that exists, or AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY)"
    )


def _database_named() -> str:
    """'URL: ' of the database in use, for an error that does not say which."""
    from backend.core.database import database_url, redacted

    try:
        return f"{redacted(database_url())}: "
    except Exception:  # noqa: BLE001 - the error being reported matters more than its name
        return ""


def settings() -> Settings:
    return get_settings()
