"""`finops plan`, `finops apply`, `finops actions ...` (reconcile included: without the
distributed runtime nothing else settles what a dead process left executing) and
`finops status`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy import select

from backend.cli.app import CommandError, app, console, handle_errors, settings
from backend.core.action_engine import ActionEngine, RunReport
from backend.core.action_planner import ActionPlanner, ApprovalError
from backend.core.auto_remediation_engine import AutoRemediationEngine
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStopEngaged
from backend.core.migrations import ensure_schema
from backend.core.models import ActionRow
from backend.core.policy_evaluator import StoredPolicyEvaluator
from backend.core.policy_manager import PolicyManager
from backend.core.types import utcnow
from backend.domain.lifecycle import ActionState, IllegalTransitionError
from backend.domain.policy import PolicyValidationError
from backend.domain.policy.model import PolicyPack

actions_app = typer.Typer(
    help="Actions: list, approve, reject, retry, roll back.", no_args_is_help=True
)
app.add_typer(actions_app, name="actions")
PolicyOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--policies", "-p", help="Policy files or directories; default FINOPS_POLICY_PATHS."
    ),
]


def _pack(paths: list[Path] | None) -> PolicyPack:
    from backend.cli.scan import load_policies

    return load_policies(paths or [Path(p) for p in settings().policy_paths])


@app.command()
@handle_errors
def plan(
    policies: PolicyOption = None,
    requested_by: Annotated[str, typer.Option(help="Who asks.")] = "cli",
) -> None:
    """Propose actions from the stored inventory, with savings and each safety verdict.

    Only policies that may run now plan: one disabled, paused or overridden in the database
    (`finops policy list` says why) plans nothing, as through the API and the engine.
    """
    _pack(policies)  # a refused pack says so before the database is touched
    ensure_schema()
    with session_scope() as session:
        now = utcnow()
        try:
            # The database's state applied: as the API and the engine plan (PolicyManager).
            pack = PolicyManager(policies or None).effective_pack(session, now)
        except PolicyValidationError:  # the files changed since: check them again
            _pack(policies)
            raise
        StoredPolicyEvaluator(session, now=now).run(pack)
        result = ActionPlanner().plan(session, pack, requested_by=requested_by)
    held = [p.name for p in pack if not p.enabled]
    if held:
        console.print(
            f"not planned (disabled, paused or overridden): {', '.join(held)}", highlight=False
        )
    for name, why in result.outside_window.items():
        console.print(f"not planned: {name}: {why}", highlight=False)
    print_actions(
        title=f"Plan: {len(result.created)} new, {len(result.blocked)} blocked, "
        f"{result.existing} already planned"
    )


@app.command()
@handle_errors
def apply(
    live: Annotated[
        bool, typer.Option("--live", help="Change the account (default: dry-run).")
    ] = False,
    action: Annotated[list[int] | None, typer.Option("--action", help="Only these ids.")] = None,
    policies: PolicyOption = None,
) -> None:
    """Execute approved actions that are due. Dry-run unless --live.

    A policy disabled, paused or overridden in the database runs nothing: its approved
    actions wait, as under the engine and the workers.
    """
    _pack(policies)  # a refused pack says so before the database is touched
    ensure_schema()
    if action:
        _refuse_unless_approved(action)
    with session_scope() as session:
        pack = PolicyManager(policies or None).effective_pack(session, utcnow())
    engine = ActionEngine(pack=pack)
    report = engine.execute(action, dry_run=not live, triggered_by="cli")
    if report.outcomes or report.stopped_by:
        print_run(report)
    else:  # an empty table would not say why
        console.print(f"Run {report.run_id}: {_why_nothing_ran(action, pack)}", highlight=False)
    if report.stopped_by or report.count("failed"):
        raise typer.Exit(1)  # a script that wraps apply learns that something failed


def _refuse_unless_approved(ids: list[int]) -> None:
    """Only an approved action runs: an unknown or other id is a mistake to name, not skip."""
    with session_scope() as session:
        rows = session.execute(select(ActionRow.id, ActionRow.state).where(ActionRow.id.in_(ids)))
        states: dict[int, str] = {row.id: row.state for row in rows}
    problems = []
    unknown = sorted({i for i in ids if i not in states})
    if unknown:
        problems.append(f"no action {', '.join(map(str, unknown))}")
    other = sorted((i, s) for i, s in states.items() if s != ActionState.APPROVED)
    if other:
        problems.append("not approved: " + ", ".join(f"{i} ({s})" for i, s in other))
    if problems:
        raise CommandError(
            "; ".join(problems) + " (only approved actions run; see finops actions list)", code=2
        )


def _why_nothing_ran(ids: list[int] | None, pack: PolicyPack) -> str:
    """What the approved actions (these ids, or all) wait for."""
    now = utcnow()
    held = {p.name for p in pack if not p.enabled}
    with session_scope() as session:
        query = select(ActionRow).where(ActionRow.state == ActionState.APPROVED)
        if ids:
            query = query.where(ActionRow.id.in_(ids))
        approved = session.scalars(query).all()
    if not approved:
        return "nothing to run: no approved action; see finops actions list"
    reasons = []
    waiting = [r.not_before for r in approved if r.not_before and r.not_before > now]
    if waiting:
        reasons.append(
            f"{len(waiting)} approved action(s) wait until {min(waiting):%Y-%m-%d %H:%M} UTC "
            "(the owners' notice)"
        )
    expired = [r for r in approved if r.approval_expires_at and r.approval_expires_at <= now]
    if expired:
        reasons.append(f"{len(expired)} approval(s) expired: approve again to run")
    on_hold = sorted({r.policy_name for r in approved if r.policy_name in held})
    if on_hold:
        reasons.append(f"held (finops policy list says why): {', '.join(on_hold)}")
    why = "; ".join(reasons) or f"{len(approved)} approved action(s), none due"
    return f"nothing due: {why}; see finops actions list --state approved"


def print_run(report: RunReport) -> None:
    mode = "DRY-RUN (nothing changed)" if report.dry_run else "LIVE"
    table = Table(title=f"Run {report.run_id}: {mode}")
    for col in ("action", "result", "detail"):
        table.add_column(col)
    for o in report.outcomes:
        table.add_row(str(o.action_id), o.result, o.detail)
    console.print(table)
    if report.stopped_by:
        console.print(f"[red]stopped:[/red] {report.stopped_by}", highlight=False)


def print_actions(title: str = "Actions", state: str | None = None) -> None:
    with session_scope() as session:
        query = select(ActionRow).order_by(ActionRow.id)
        if state:
            query = query.where(ActionRow.state == state)
        rows = session.scalars(query).all()
        table = Table(title=title)
        for col in ("id", "state", "policy", "action", "resource", "savings/mo", "safety"):
            table.add_column(col, overflow="fold")
        for r in rows:
            verdict = r.safety_verdict or {}
            blocking = [v["reason"] for v in verdict.get("verdicts", []) if not v["ok"]]
            table.add_row(
                str(r.id),
                r.state,
                r.policy_name,
                r.action,
                f"{r.region}/{r.resource_id}",
                ""
                if r.estimated_monthly_savings is None
                else f"${r.estimated_monthly_savings:,.2f}",
                "; ".join(blocking) or ("allowed" if verdict else ""),
            )
    console.print(table)


@actions_app.command("list")
@handle_errors
def list_actions(
    state: Annotated[ActionState | None, typer.Option(help="Only this state.")] = None,
) -> None:
    """Every action with its state, savings and safety verdict."""
    ensure_schema()
    print_actions(state=state)


@actions_app.command("approve")
@handle_errors
def approve(
    action_id: int, approver: Annotated[str, typer.Option("--as", help="Approver.")]
) -> None:
    """Approve an action (not your own request); the approval expires."""
    try:
        with session_scope() as session:
            row = ActionPlanner().approve(session, action_id, approver)
            until = row.approval_expires_at
    except (ApprovalError, IllegalTransitionError, LookupError) as exc:
        raise CommandError(str(exc), code=2) from None
    # said once committed: a commit that fails (a full disk) approved nothing
    console.print(f"action {action_id} approved by {approver} until {until:%Y-%m-%d %H:%M} UTC")


@actions_app.command("reject")
@handle_errors
def reject(
    action_id: int,
    actor: Annotated[str, typer.Option("--as", help="Who rejects.")],
    reason: Annotated[str, typer.Option(help="Why.")],
) -> None:
    """Reject an action; it will not run."""
    try:
        with session_scope() as session:
            ActionPlanner().reject(session, action_id, actor, reason)
    except (ApprovalError, IllegalTransitionError, LookupError) as exc:
        raise CommandError(str(exc), code=2) from None
    console.print(f"action {action_id} rejected")


@actions_app.command("retry")
@handle_errors
def retry(
    action_id: int,
    actor: Annotated[str, typer.Option("--as")] = "cli",
    live: Annotated[
        bool,
        typer.Option(
            "--live", help="Retry for real (default: dry-run unless FINOPS_DRY_RUN=false)."
        ),
    ] = False,
) -> None:
    """Judge a failed action again on a fresh describe, then run it. Dry-run unless --live
    (or FINOPS_DRY_RUN=false): a dry run says what would happen; the action stays failed."""
    # Through the engine, never ActionEngine.retry (always live): the dry-run default holds.
    try:
        outcome = AutoRemediationEngine().retry_action(
            action_id, actor, dry_run=False if live else None
        )
    except (IllegalTransitionError, LookupError, ValueError) as exc:
        raise CommandError(str(exc), code=2) from None
    console.print(f"action {action_id}: {outcome.result} {outcome.detail}", highlight=False)
    if outcome.result in ("stopped", "failed"):
        raise typer.Exit(1)


@actions_app.command("rollback")
@handle_errors
def rollback(
    action_id: Annotated[int | None, typer.Argument(help="One action.")] = None,
    run: Annotated[int | None, typer.Option(help="Every action of this run.")] = None,
    policy: Annotated[str | None, typer.Option(help="Every action of this policy...")] = None,
    since: Annotated[str | None, typer.Option(help="...since this ISO time.")] = None,
    actor: Annotated[str, typer.Option("--as")] = "cli",
) -> None:
    """Undo from the recorded pre-state; what cannot be undone says why."""
    ensure_schema()
    engine = ActionEngine()
    if action_id is not None:
        try:
            outcomes = [engine.rollback(action_id, actor)]
        except EmergencyStopEngaged as exc:
            raise CommandError(f"{exc}; release it first (`finops resume`)", code=1) from None
        except LookupError as exc:
            raise CommandError(str(exc), code=2) from None
    elif run is not None:
        outcomes = engine.rollback_run(run, actor)
    elif policy and since:
        try:
            when = dt.datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise CommandError(f"--since {since!r} is not an ISO time", code=2) from None
        if when.tzinfo is None:  # guessing the zone would pick other actions to undo
            raise CommandError(
                f"--since {since!r} has no zone: add Z (UTC) or an offset such as +01:00",
                code=2,
            ) from None
        outcomes = engine.rollback_policy(policy, when, actor)
    else:
        raise CommandError("give an ACTION_ID, --run N, or --policy NAME --since TIME", code=2)
    if not outcomes:
        # Said, not silent: a wrong id or name, or everything already rolled back.
        what = f"run {run}" if run is not None else f"policy {policy!r} since {since}"
        console.print(f"nothing to roll back: no succeeded action in {what}", highlight=False)
    for o in outcomes:
        console.print(f"action {o.action_id}: {o.result} {o.detail}", highlight=False)
    if any(o.result in ("failed", "stopped") for o in outcomes):
        raise typer.Exit(1)


@actions_app.command("reconcile")
@handle_errors
def reconcile_actions(
    action_ids: Annotated[
        list[int] | None, typer.Argument(help="These actions only (default: every stuck one).")
    ] = None,
) -> None:
    """Settle actions left executing past their deadline by a process that died: from the
    record, then from the account itself (succeeded if the change is there, failed with its
    pre-state and backup kept if not; an account that cannot be read leaves it as it is).
    An action still within its deadline, or held by a live worker, is left alone: its
    process may still be working on it."""
    from backend.runtime.reconcile import reconcile, stuck_actions
    from backend.runtime.services import WorkerServices

    ensure_schema()
    services = WorkerServices(settings())
    stuck = stuck_actions(services, utcnow())
    chosen = action_ids or stuck
    if not chosen:
        console.print("nothing to reconcile: no action is executing past its deadline")
        return
    for action_id in chosen:
        if action_id not in stuck:
            console.print(
                f"action {action_id}: left alone: not executing past its deadline "
                "(or a live worker holds it)",
                highlight=False,
            )
            continue
        console.print(f"action {action_id}: {reconcile(services, action_id)}", highlight=False)


@app.command()
@handle_errors
def status() -> None:
    """The safety system, the emergency stop, and what is active."""
    from backend.core.safety_checker import SafetyChecker

    ensure_schema()
    console.print(str(SafetyChecker().system_status()), highlight=False, markup=False)
    ActionEngine().get_active_actions()
