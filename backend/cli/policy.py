"""`finops policy ...`: validate and list the pack, sync it to the database, switch policies.

The files say what each policy does; `enable`, `disable`, `pause` and `resume` change only
whether it may run, in the database, and each change is audited.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from backend.cli.app import CommandError, console, err, handle_errors, policy_app

if TYPE_CHECKING:
    from backend.core.policy_manager import PolicyManager
    from backend.domain.policy import PolicyPack

PATHS_HELP = "Policy files or directories (default: the configured FINOPS_POLICY_PATHS)."
REASON_HELP = "Why: kept in the audit log."
UNTIL_HELP = "End of the pause: an ISO time with a zone (2026-12-31T00:00Z) or a duration (7d)."
_DURATION = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

Paths = Annotated[list[Path] | None, typer.Argument(help=PATHS_HELP, show_default=False)]
Name = Annotated[str, typer.Argument(help="The policy's name.", metavar="NAME", show_default=False)]


def _manager(paths: list[Path] | None = None) -> PolicyManager:
    from backend.core.policy_manager import PolicyManager

    return PolicyManager(paths or None)


def _actor() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _reason(value: str | None, *, required: bool) -> str | None:
    text = (value or "").strip()
    if required and not text:
        raise typer.BadParameter("must say why (it goes into the audit log)", param_hint="--reason")
    return text or None


def parse_until(value: str, now: dt.datetime) -> dt.datetime:
    """An aware ISO time, or a duration from now (30m, 12h, 7d, 2w); ValueError says why."""
    match = _DURATION.match(value)
    if match:
        moment = now + dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    else:
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"expected an ISO time like 2026-12-31T00:00Z or a duration like 7d; got {value!r}"
            ) from None
        if moment.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone; add Z or an offset like +01:00")
    if moment <= now:
        raise ValueError(f"{value!r} is not in the future")
    return moment.astimezone(dt.UTC)


def _load(manager: PolicyManager) -> PolicyPack:
    """Refuse a broken pack with every problem, before anything touches the database."""
    from backend.domain.policy import PolicyValidationError

    try:
        return manager.load()
    except PolicyValidationError as exc:
        lines = "\n".join(f"  {p}" for p in exc.problems)
        raise CommandError(
            f"policy pack refused ({len(exc.problems)} problem(s)):\n{lines}", code=2
        ) from None


def _say(text: str) -> None:
    console.print(text, highlight=False, markup=False, soft_wrap=True)


@policy_app.command("validate")
@handle_errors
def validate(paths: Paths = None) -> None:
    """Check every policy; print each problem with file, policy and line. Exit 2 if any.

    Without PATHS the configured pack is checked and compared with the database state.
    """
    report = _manager(paths).check(database=not paths)
    for line in report.lines:
        (console if report.ok else err).print(line, highlight=False, markup=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(2)


@policy_app.command("list")
@handle_errors
def list_policies(paths: Paths = None) -> None:
    """Show each policy: kind, action, mode, schedule, limits and whether it may run now."""
    from backend.core.database import session_scope
    from backend.core.migrations import ensure_schema
    from backend.core.types import utcnow

    manager = _manager(paths)
    pack = _load(manager)
    states: dict[str, str] = {p.name: "yes" if p.enabled else "no (file)" for p in pack}
    if not paths:  # the configured pack: its state is in the database
        ensure_schema()
        with session_scope() as session:
            for s in manager.statuses(session, utcnow(), pack):
                states[s.policy.name] = "yes" if s.enabled else "no: " + "; ".join(s.blocked_by)
    table = Table(title="Policies")
    for col in ("name", "kind", "action", "mode", "risk", "schedule", "limits", "runs"):
        table.add_column(col)
    for p in pack.policies:
        limits = ", ".join(
            f"{k}={v}"
            for k, v in (
                ("max/run", p.limits.max_actions_per_run),
                ("max%", p.limits.max_percent_of_fleet),
            )
            if v is not None
        )
        schedule = f"{p.schedule.cron} {p.schedule.timezone}" if p.schedule else ""
        row = (p.name, p.kind.value, p.action.name, p.mode, p.risk, schedule, limits)
        table.add_row(*row, states[p.name])
    console.print(table)


@policy_app.command("sync")
@handle_errors
def sync() -> None:
    """Record the configured pack in the database; enabled and paused state are kept."""
    from backend.core.database import session_scope
    from backend.core.migrations import ensure_schema

    manager = _manager()
    _load(manager)
    ensure_schema()
    with session_scope() as session:
        result = manager.sync(session, _actor())
    _say(
        f"policies synced: {len(result.created)} created, {len(result.updated)} updated, "
        f"{len(result.unchanged)} unchanged"
    )
    for verb, names in (("created", result.created), ("updated", result.updated)):
        if names:
            _say(f"  {verb}: {', '.join(names)}")
    if result.stale:
        err.print(
            f"warning: in the database but no longer in the files (they do not run): "
            f"{', '.join(result.stale)}",
            highlight=False,
            markup=False,
        )


def _change(name: str, done: str, already: str, act: Callable[[PolicyManager, str], bool]) -> None:
    """Apply one state change, then say whether the policy may run now."""
    from backend.core.database import session_scope
    from backend.core.migrations import ensure_schema
    from backend.core.policy_manager import UnknownPolicyError
    from backend.core.types import utcnow
    from backend.domain.policy import PolicyValidationError

    manager = _manager()
    ensure_schema()
    try:
        changed = act(manager, _actor())
    except (UnknownPolicyError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    _say(f"policy {name!r} {done}" if changed else f"policy {name!r} {already}; nothing changed")
    try:
        with session_scope() as session:
            found = [s for s in manager.statuses(session, utcnow()) if s.policy.name == name]
    except PolicyValidationError:
        return  # a refused pack runs nothing; `finops policy validate` says why
    if found and not found[0].enabled:
        _say(f"it does not run now: {'; '.join(found[0].blocked_by)}")


@policy_app.command("enable")
@handle_errors
def enable(
    name: Name,
    reason: Annotated[str | None, typer.Option("--reason", help=REASON_HELP)] = None,
) -> None:
    """Let a policy run again (a pause or an override still holds it)."""
    why = _reason(reason, required=False)
    _change(name, "enabled", "was already enabled", lambda m, a: m.set_enabled(name, True, a, why))


@policy_app.command("disable")
@handle_errors
def disable(
    name: Name,
    reason: Annotated[str, typer.Option("--reason", help=REASON_HELP, show_default=False)],
) -> None:
    """Stop a policy from running until it is enabled again."""
    why = _reason(reason, required=True)
    _change(
        name, "disabled", "was already disabled", lambda m, a: m.set_enabled(name, False, a, why)
    )


@policy_app.command("pause")
@handle_errors
def pause(
    name: Name,
    until: Annotated[str, typer.Option("--until", help=UNTIL_HELP, show_default=False)],
    reason: Annotated[str, typer.Option("--reason", help=REASON_HELP, show_default=False)],
) -> None:
    """Stop a policy from running until a time; it resumes by itself then."""
    from backend.core.types import utcnow

    try:
        end = parse_until(until, utcnow())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--until") from None
    why = _reason(reason, required=True) or ""
    label = f"paused until {end:%Y-%m-%d %H:%M}Z"
    _change(name, label, f"was already {label}", lambda m, a: m.pause(name, end, a, why))


@policy_app.command("resume")
@handle_errors
def resume(
    name: Name,
    reason: Annotated[str | None, typer.Option("--reason", help=REASON_HELP)] = None,
) -> None:
    """End a policy's pause now."""
    why = _reason(reason, required=False)
    _change(name, "resumed", "was not paused", lambda m, a: m.resume(name, a, why))
