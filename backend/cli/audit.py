"""`finops audit ...`: check the hash chain, export events, print an incident timeline."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Annotated

import typer

from backend.cli.app import CommandError, app, console, err, handle_errors
from backend.core.audit_chain import parse_time_spec
from backend.core.automation_audit_logger import AuditLogError, AuditLogger
from backend.core.migrations import ensure_schema
from backend.core.types import utcnow

audit_app = typer.Typer(help="The audit log: verify, export, timeline.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

SINCE_HELP = "Start: an ISO time (2026-01-01T00:00:00Z) or an age (30m, 24h, 7d)."
UNTIL_HELP = "End (exclusive), in the same forms; default now."


def _when(value: str, option: str, now: dt.datetime) -> dt.datetime:
    try:
        return parse_time_spec(value, now=now)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def _window(since: str, until: str | None) -> tuple[dt.datetime, dt.datetime | None]:
    now = utcnow()
    start = _when(since, "--since", now)
    end = _when(until, "--until", now) if until else None
    if end is not None and end <= start:
        raise typer.BadParameter("must be later than --since", param_hint="--until")
    return start, end


@audit_app.command("verify")
@handle_errors
def verify(
    last: Annotated[int | None, typer.Option(min=1, help="Check only the newest N events.")] = None,
    forget_head: Annotated[
        bool,
        typer.Option(
            "--forget-head",
            help="Forget the remembered head first (only after recreating the database).",
        ),
    ] = False,
) -> None:
    """Check every event's hash and link. Exit 1 naming the first broken event."""
    ensure_schema()
    logger = AuditLogger()
    try:
        if forget_head:
            logger.forget_head()
        report = logger.verify(last=last)
    except AuditLogError as exc:
        raise CommandError(str(exc)) from None
    if report.ok:
        head = f" (head hash {report.head_hash})" if report.head_hash else ""
        console.print(f"{report}{head}", highlight=False, markup=False, soft_wrap=True)
        return
    err.print(str(report), highlight=False, markup=False)
    if report.reason and "was committed" in report.reason:
        # Rows vanished after their commit was seen: tampering, or a deliberately recreated DB.
        err.print(
            "if this database was deliberately recreated, run `finops audit verify --forget-head`",
            highlight=False,
            markup=False,
        )
    raise typer.Exit(1)


@audit_app.command("export")
@handle_errors
def export(
    since: Annotated[str, typer.Option("--since", help=SINCE_HELP)],
    until: Annotated[str | None, typer.Option("--until", help=UNTIL_HELP)] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write here, not stdout.")] = None,
) -> None:
    """Write the events of a window as JSON Lines, hashes included."""
    start, end = _window(since, until)
    ensure_schema()
    logger = AuditLogger()
    if out is None:
        logger.export_jsonl(start, end, stream=sys.stdout)
        return
    try:
        with out.open("w", encoding="utf-8") as handle:
            count = logger.export_jsonl(start, end, stream=handle)
    except OSError as exc:
        raise CommandError(f"cannot write {out}: {exc.strerror or exc}") from None
    err.print(f"{count} event(s) written to {out}", highlight=False, markup=False)


@audit_app.command("timeline")
@handle_errors
def timeline(
    since: Annotated[str, typer.Option("--since", help=SINCE_HELP)],
    until: Annotated[str | None, typer.Option("--until", help=UNTIL_HELP)] = None,
) -> None:
    """Print every event of a window as one line each, oldest first."""
    start, end = _window(since, until)
    ensure_schema()
    lines = AuditLogger().timeline(start, end)
    if not lines:
        console.print("no audit events in that window", highlight=False)
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
