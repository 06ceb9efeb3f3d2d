"""ActionEngine: executes approved actions, exactly once, each step recorded.

For each action: the emergency stop is checked; the action is claimed atomically (one
UPDATE from approved to executing, with its audit event); it is judged again on a fresh
describe; the pre-state is recorded, the backup taken and recorded; the change is made with
the emergency stop checked before every changing AWS call; the post-state is verified. A
failure at any step leaves a truthful state (failed, blocked, or handed back untouched) and
keeps the backup. In dry-run the same judgement runs read-only and nothing changes.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.config import Settings, get_settings
from backend.core.action_transition import transition
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop, EmergencyStopEngaged
from backend.core.execution_context import ExecutionContext
from backend.core.models import ActionRow, ActionRunRow, ResourceRow
from backend.core.repositories import active_actions, due_conditions, lock_runs
from backend.core.runbook_output import echo
from backend.core.safety_checker import SafetyChecker
from backend.core.schedule_window import missed_reason, window_passed
from backend.core.types import utcnow
from backend.domain.lifecycle import ActionState
from backend.domain.policy.model import PolicyPack
from backend.domain.resources import ResourceKind
from backend.domain.safety import BatchItem, FleetCounts
from backend.providers.aws.session import AwsClients

S = ActionState


@dataclass
class ActionOutcome:
    action_id: int
    result: str  # succeeded | failed | blocked | skipped | would-execute | would-block | stopped
    # | held | claim-lost (the action was settled by the reconciler and is in other hands)
    detail: str = ""


@dataclass
class RunReport:
    run_id: int | None
    dry_run: bool
    outcomes: list[ActionOutcome] = field(default_factory=list)
    stopped_by: str | None = None  # a blast-radius verdict or the emergency stop
    batch: list[int] = field(default_factory=list)  # the ids the run may execute
    emergency_stop: bool = False  # stopped_by is the emergency stop, not a verdict

    def count(self, result: str) -> int:
        return sum(1 for o in self.outcomes if o.result == result)


STOP_BEFORE_CLAIM = "emergency stop before the claim: "


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ActionEngine:
    def __init__(
        self,
        *,
        settings: Settings | None = None,
        clients: AwsClients | None = None,
        safety: SafetyChecker | None = None,
        audit: AuditLogger | None = None,
        emergency: EmergencyStop | None = None,
        pack: PolicyPack | None = None,
        worker: str | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._clients = clients
        self._safety = safety or SafetyChecker(settings=settings, clock=clock)
        self._audit = audit or AuditLogger()
        self._emergency = emergency or EmergencyStop(audit=self._audit)
        self._pack = pack
        self._worker = worker or worker_name()
        self._clock = clock

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    def _context(self) -> ExecutionContext:
        clients = self._clients or AwsClients(endpoint_url=self.settings.aws_endpoint_url)
        self._clients = clients
        return ExecutionContext(self.settings, clients, self._emergency, self._pack)

    # -- the runbook's view --------------------------------------------------------------
    def get_active_actions(self) -> list[dict[str, Any]]:
        """What is executing now or approved to run next; printed for the runbook."""
        from backend.core.migrations import ensure_embedded_schema

        ensure_embedded_schema()
        with session_scope() as session:
            active: list[dict[str, Any]] = [
                {
                    "id": r.id,
                    "state": r.state,
                    "policy": r.policy_name,
                    "action": r.action,
                    "resource": f"{r.account_id}/{r.region}/{r.resource_id}",
                    "claimed_by": r.claimed_by,
                    "deadline": r.deadline.isoformat() if r.deadline else None,
                }
                for r in active_actions(session)
            ]
        echo(f"{len(active)} active action(s)" + ("" if active else ": nothing executing"))
        for a in active:
            echo(
                f"  #{a['id']} {a['state']:9} {a['action']} {a['resource']} "
                f"({a['policy']}){' by ' + a['claimed_by'] if a['claimed_by'] else ''}"
            )
        return active

    # -- a batch -------------------------------------------------------------------------
    def execute(
        self,
        action_ids: list[int] | None = None,
        *,
        dry_run: bool | None = None,
        triggered_by: str = "system",
    ) -> RunReport:
        """Start a run (blast radius judged on the whole batch), then each action in turn."""
        report = self.start_run(action_ids, dry_run=dry_run, triggered_by=triggered_by)
        if report.run_id is None or report.stopped_by:
            return report
        for action_id in report.batch:
            outcome = self.execute_one(action_id, report.run_id, dry_run=report.dry_run)
            if outcome.result == "stopped" and outcome.detail.startswith(STOP_BEFORE_CLAIM):
                report.stopped_by = outcome.detail.removeprefix(STOP_BEFORE_CLAIM)
                report.emergency_stop = True
                break
            report.outcomes.append(outcome)
        self.finish_run(report)
        return report

    def start_run(
        self,
        action_ids: list[int] | None = None,
        *,
        dry_run: bool | None = None,
        triggered_by: str = "system",
    ) -> RunReport:
        """Record a run of the approved, due actions (or these ids) and judge its blast radius.

        A batch over any limit is stopped whole: `stopped_by` says why and `batch` is empty.
        The distributed runtime queues `batch` one task per action; `execute` runs it here.
        """
        dry_run = self.settings.dry_run if dry_run is None else dry_run
        report = RunReport(run_id=None, dry_run=dry_run)
        try:
            self._emergency.check("starting a run")
        except EmergencyStopEngaged as exc:
            report.stopped_by, report.emergency_stop = str(exc), True
            return report
        now = self._clock()
        with session_scope() as session:
            lock_runs(session)  # two runs starting at once must not both pass the limits
            due = self._due(session, action_ids, now)
            verdict = self._blast_radius(session, due, now)
            run = ActionRunRow(
                started_at=now, triggered_by=triggered_by, dry_run=dry_run, status="running"
            )
            session.add(run)
            session.flush()
            report.run_id = run.id
            if not verdict.ok:
                run.status, run.finished_at = "stopped", now
                run.summary = {"stopped_by": verdict.reason, "actions": [a.id for a in due]}
                self._audit.record(
                    "safety_verdict",
                    subject_type="run",
                    subject_id=run.id,
                    actor="safety",
                    outcome="blocked",
                    details={
                        "rule": verdict.rule.value,
                        "summary": verdict.reason,
                        "actions": len(due),
                    },
                    session=session,
                )
                report.stopped_by = verdict.reason
                return report
            report.batch = [a.id for a in due]
            if not dry_run:
                run.summary = {"admitted": report.batch}  # counted in the hour's limit
        return report

    def execute_one(self, action_id: int, run_id: int | None, *, dry_run: bool) -> ActionOutcome:
        """One action of a run: the stop is checked before the claim, and in every step."""
        try:
            self._emergency.check("the next claim")
        except EmergencyStopEngaged as exc:
            return ActionOutcome(action_id, "stopped", f"{STOP_BEFORE_CLAIM}{exc}")
        ctx = self._context()
        step = ctx.dry_run_one if dry_run else ctx.execute_one
        return step(action_id, run_id, self._safety, self._audit, self._worker, self._clock)

    def finish_run(self, report: RunReport) -> None:
        with session_scope() as session:
            finished = session.get(ActionRunRow, report.run_id)
            assert finished is not None
            finished.status = "stopped" if report.stopped_by else "finished"
            finished.finished_at = self._clock()
            finished.summary = {
                "outcomes": {o.action_id: o.result for o in report.outcomes},
                "stopped_by": report.stopped_by,
            }

    def _due(self, session: Session, ids: list[int] | None, now: dt.datetime) -> list[ActionRow]:
        query = select(ActionRow).where(*due_conditions(now))
        if ids is not None:
            query = query.where(ActionRow.id.in_(ids))
        # A disabled or paused policy's approved actions wait (still approved) for its resume.
        held = {p.name for p in self._context().pack() if not p.enabled}
        return [
            r for r in session.scalars(query.order_by(ActionRow.id)) if r.policy_name not in held
        ]

    def _blast_radius(self, session: Session, due: list[ActionRow], now: dt.datetime) -> Any:
        fleet = {
            ResourceKind(k): int(n)
            for k, n in session.execute(
                select(ResourceRow.kind, func.count())
                .where(ResourceRow.gone_at.is_(None))
                .group_by(ResourceRow.kind)
            )
        }
        hour_ago = now - dt.timedelta(hours=1)
        # Executed in the last hour, whatever became of it since (rolled back included)...
        claimed = session.scalar(
            select(func.count())
            .select_from(ActionRow)
            .where(
                ActionRow.claimed_at >= hour_ago,
                ActionRow.state.in_([S.EXECUTING, S.SUCCEEDED, S.FAILED, S.ROLLED_BACK]),
            )
        )
        # ...and admitted by a live run in the last hour, still waiting for a worker: a
        # dispatch tick must not pass the limit again before the last tick's tasks ran.
        admitted = {
            int(i)
            for summary in session.scalars(
                select(ActionRunRow.summary).where(
                    ActionRunRow.started_at >= hour_ago, ActionRunRow.dry_run.is_(False)
                )
            )
            for i in (summary or {}).get("admitted", [])
        } - {a.id for a in due}
        waiting = (
            session.scalar(
                select(func.count())
                .select_from(ActionRow)
                .where(ActionRow.id.in_(admitted), ActionRow.state == S.APPROVED)
            )
            if admitted
            else 0
        )
        last_hour = int(claimed or 0) + int(waiting or 0)
        pack = self._context().pack()
        limits = {p.name: p.limits for p in pack.policies}
        batch = [
            BatchItem(
                a.policy_name,
                ResourceKind(a.kind),
                getattr(limits.get(a.policy_name), "max_actions_per_run", None),
                getattr(limits.get(a.policy_name), "max_percent_of_fleet", None),
            )
            for a in due
        ]
        return self._safety.check_batch(batch, FleetCounts(fleet), int(last_hour))

    # -- one action, by id (the runbook's retry, the API's execute) ---------------------
    def rollback(self, action_id: int, actor: str) -> ActionOutcome:
        return self._context().rollback_one(action_id, actor, self._audit, self._clock)

    def rollback_run(self, run_id: int, actor: str) -> list[ActionOutcome]:
        with session_scope() as session:
            ids = [
                r.id
                for r in session.scalars(
                    select(ActionRow).where(
                        ActionRow.run_id == run_id, ActionRow.state == S.SUCCEEDED
                    )
                )
            ]
        return self._rollback_each(list(reversed(ids)), actor)

    def rollback_policy(self, policy: str, since: dt.datetime, actor: str) -> list[ActionOutcome]:
        with session_scope() as session:
            ids = [
                r.id
                for r in session.scalars(
                    select(ActionRow).where(
                        ActionRow.policy_name == policy,
                        ActionRow.state == S.SUCCEEDED,
                        ActionRow.finished_at >= since,
                    )
                )
            ]
        return self._rollback_each(list(reversed(ids)), actor)

    def _rollback_each(self, ids: list[int], actor: str) -> list[ActionOutcome]:
        """One failure does not end the others' rollbacks; the emergency stop does."""
        outcomes: list[ActionOutcome] = []
        for action_id in ids:
            try:
                outcome = self.rollback(action_id, actor)
            except EmergencyStopEngaged as exc:
                outcome = ActionOutcome(action_id, "stopped", str(exc))
            outcomes.append(outcome)
            if outcome.result == "stopped":
                break
        return outcomes

    def retry(self, action_id: int, actor: str) -> ActionOutcome:
        """A failed action goes back to approved, then runs again through every check."""
        self.reapprove(action_id, actor)
        report = self.execute([action_id], dry_run=False, triggered_by=actor)
        if report.stopped_by:
            return ActionOutcome(action_id, "stopped", report.stopped_by)
        return report.outcomes[0] if report.outcomes else ActionOutcome(action_id, "skipped")

    def reapprove(self, action_id: int, actor: str) -> None:
        """Failed -> approved (audited): due again, to be claimed like any approved action."""
        with session_scope() as session:
            row = session.get(ActionRow, action_id)
            if row is None:
                raise LookupError(f"no action {action_id}")
            if window_passed(row, self._clock()):
                # A retry is no way around a scheduled run's window (an off-hours stop).
                raise ValueError(f"action {action_id} {missed_reason(row)}")
            transition(
                session,
                row,
                S.APPROVED,
                actor=actor,
                audit=self._audit,
                event="execution",
                details={"retry": True, "last_error": row.error},
            )
            row.error = None
