"""`finops emergency-stop` and `finops resume`: the brake, from a terminal."""

from __future__ import annotations

import getpass
import socket
from typing import Annotated

import typer

from backend.cli.app import CommandError, app, console, err, handle_errors
from backend.core.auto_remediation_engine import AutoRemediationEngine
from backend.core.automation_audit_logger import AuditLogError
from backend.core.database import DatabaseUnavailableError
from backend.core.emergency_stop import EmergencyStop, EngineState, not_persisted
from backend.core.migrations import SchemaOutOfDateError, ensure_schema


def _default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _print_state(state: EngineState) -> None:
    console.print(state.describe(), highlight=False, markup=False, soft_wrap=True)


def _halt_workers() -> None:
    try:
        halted = AutoRemediationEngine().dispatcher.halt()
        console.print(f"dispatcher: {halted}", highlight=False, markup=False, soft_wrap=True)
    except Exception as exc:  # noqa: BLE001 - the stop holds (or is reported) regardless
        err.print(f"workers not told ({exc}); each checks the stop before every claim")


@app.command("emergency-stop")
@handle_errors
def emergency_stop(
    reason: Annotated[
        str, typer.Option("--reason", help="Why: shown to every worker and audited.")
    ],
    actor: Annotated[
        str | None, typer.Option("--actor", help="Who engages it; default user@host.")
    ] = None,
) -> None:
    """Stop all automation now: no claim and no AWS call until an admin resumes."""
    if not reason.strip():
        raise typer.BadParameter("must not be empty", param_hint="--reason")
    stop = EmergencyStop()
    stop.set_stop_key(reason)  # the workers stop before the database answers, or not
    try:
        ensure_schema()
    except SchemaOutOfDateError as exc:
        # The brake needs only the engine_state table (in every revision): engage anyway.
        err.print(f"warning: {exc}", highlight=False, markup=False)
    except DatabaseUnavailableError:
        pass  # engage() says so below (the Redis key is set: it needs no database)
    try:
        result = stop.engage(reason, actor or _default_actor())
    except ValueError as exc:  # an empty or over-long actor
        raise typer.BadParameter(str(exc), param_hint="--actor") from None
    except DatabaseUnavailableError as exc:
        _halt_workers()  # through Redis: they hear it even though the database is down
        again = "run `finops emergency-stop` again"
        raise CommandError(not_persisted(stop.stop_key_set(), exc, again), code=3) from None
    _print_state(result)
    # Then, as the runbook's engine call does: the workers told at once and the queued
    # actions dropped. Best effort: every worker checks the stop before each claim anyway.
    _halt_workers()
    # The stop holds either way (exit 0); what failed around it is said loudly.
    if result.audit_error:
        err.print(f"[red]audit event NOT written:[/red] {result.audit_error}", highlight=False)
    if result.alert_error:
        err.print(f"[red]emergency alert NOT sent:[/red] {result.alert_error}", highlight=False)


@app.command("resume")
@handle_errors
def resume(
    actor: Annotated[str, typer.Option("--actor", help="The administrator lifting the stop.")],
    i_am_admin: Annotated[
        bool,
        typer.Option(
            "--i-am-admin",
            help="Assert administrator rights. Temporary: the API will check real roles.",
        ),
    ] = False,
) -> None:
    """Lift the emergency stop (administrators only; audited).

    Until the API's roles exist, the operator asserts admin rights with --i-am-admin.
    """
    ensure_schema()
    try:
        # Through the engine: it also tells the workers to consume the actions queue again.
        result = AutoRemediationEngine().resume(actor, is_admin=i_am_admin)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--actor") from None
    except PermissionError as exc:
        raise CommandError(f"{exc} (pass --i-am-admin if you are one)") from None
    except AuditLogError as exc:
        raise CommandError(f"not resumed, the audit log refused the event: {exc}") from None
    state = result.state
    if state.fast_path_error:
        # Released in the database, yet the key still stops every worker: not "running".
        err.print(*result.notes, highlight=False, markup=False)
        raise CommandError(state.describe())
    _print_state(state)
    for note in result.notes:
        console.print(note, highlight=False, markup=False, soft_wrap=True)
