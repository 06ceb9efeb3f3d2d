"""`finops rollback-watch`: fire the automated rollback triggers (architecture step 7)."""

from __future__ import annotations

import time
from typing import Annotated

import structlog
import typer

from backend.cli.app import CommandError, app, console, handle_errors
from backend.core.automation_audit_logger import AuditLogger
from backend.core.migrations import ensure_schema
from backend.core.rollback_triggers import WATCHER, RollbackTriggers, TriggerResult
from backend.providers.aws.retry import describe_error

log = structlog.get_logger(__name__)


def _pairs(values: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        policy, sep, rest = value.partition("=")
        if not sep or not policy.strip() or not rest.strip():
            raise typer.BadParameter(f"{value!r}: expected POLICY=VALUE", param_hint=option)
        out[policy.strip()] = rest.strip()
    return out


def _print(results: list[TriggerResult]) -> None:
    if not results:
        console.print("no rollback trigger fired", highlight=False)
    for r in results:
        target = f"#{r.action_id}" if r.action_id is not None else "-"
        console.print(
            f"{target} {r.result}: {r.trigger} (by {r.fired_by}) {r.detail}",
            highlight=False,
            markup=False,
        )


def _check_failed(audit: AuditLogger, exc: Exception) -> str:
    """Say and audit that a whole check failed; the watch goes on at the next interval."""
    error = describe_error(exc)
    log.error("rollback check failed", error=error)
    console.print(f"rollback check failed: {error}", highlight=False, markup=False)
    try:
        audit.log(
            "rollback",
            subject_type="rollback-watch",
            subject_id="check",
            actor=WATCHER,
            outcome="check failed",
            details={"error": error},
        )
    except Exception as audit_exc:  # noqa: BLE001 - an unwritable audit must not end the watch
        log.error("rollback check failure not audited", error=describe_error(audit_exc))
    return error


@app.command("rollback-watch")
@handle_errors
def rollback_watch(
    once: Annotated[bool, typer.Option("--once", help="Check once, then exit.")] = False,
    interval: Annotated[
        int, typer.Option("--interval", min=10, help="Seconds between checks without --once.")
    ] = 300,
    alarm: Annotated[
        list[str] | None,
        typer.Option("--alarm", help="POLICY=ALARM[,ALARM]: roll back when one is in ALARM."),
    ] = None,
    window: Annotated[
        list[str] | None,
        typer.Option("--window", help="POLICY=DAYS: that policy's rollback window."),
    ] = None,
) -> None:
    """Undo recent actions whose resources turned out to be needed (started again, alarms)."""
    try:
        windows = {p: float(d) for p, d in _pairs(window or [], "--window").items()}
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--window") from None
    alarms = {p: [a for a in v.split(",") if a] for p, v in _pairs(alarm or [], "--alarm").items()}
    ensure_schema()
    audit = AuditLogger()
    triggers = RollbackTriggers(windows=windows, alarms=alarms, audit=audit)
    while True:
        try:
            _print(triggers.check())
        except ValueError as exc:  # a bad FINOPS_ROLLBACK_WINDOW_DAYS
            raise CommandError(str(exc), 2) from None
        except Exception as exc:  # noqa: BLE001 - a watcher that dies watches nothing
            error = _check_failed(audit, exc)
            if once:
                raise CommandError(f"rollback check failed: {error}", 1) from None
        if once:
            return
        time.sleep(interval)
