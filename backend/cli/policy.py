"""`finops policy ...`: validate a pack and list what it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from backend.cli.app import console, err, handle_errors, policy_app


@policy_app.command("validate")
@handle_errors
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Policy files or directories.")],
) -> None:
    """Check every policy; print each problem with file, policy and line. Exit 2 if any."""
    from backend.domain.policy.loader import load_pack, validate_paths

    problems = validate_paths(paths)
    if problems:
        for problem in problems:
            err.print(str(problem), highlight=False, markup=False)
        err.print(f"{len(problems)} problem(s); the pack is refused whole")
        raise typer.Exit(2)
    pack = load_pack(paths)
    console.print(f"{len(pack.policies)} policies valid")


@policy_app.command("list")
@handle_errors
def list_policies(
    paths: Annotated[list[Path], typer.Argument(help="Policy files or directories.")],
) -> None:
    """Show each policy: kind, action, mode, schedule and limits."""
    from backend.cli.scan import load_policies

    pack = load_policies(paths)
    table = Table(title="Policies")
    for col in ("name", "kind", "action", "mode", "risk", "schedule", "limits", "enabled"):
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
        table.add_row(
            p.name,
            p.kind.value,
            p.action.name,
            p.mode,
            p.risk,
            schedule,
            limits,
            "yes" if p.enabled else "no",
        )
    console.print(table)
