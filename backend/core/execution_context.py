"""The steps of one action: claim, judge, pre-state, backup, change, verify; and undo.

Each step commits with its audit event before the next begins, so a crash between steps
leaves a record that says exactly how far the action got.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import structlog
from botocore.exceptions import ClientError
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.core.action_claim import claim, why_held
from backend.core.action_transition import transition
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop, EmergencyStopEngaged
from backend.core.execution_endings import (
    ChangeUnverifiedError,
    change_started,
    claim_lost,
    failed,
    interrupted,
    short_backup,
)
from backend.core.execution_guard import Claim, ClaimLostError, Guard
from backend.core.models import ActionRow
from backend.core.schedule_window import WAITING, block, missed_reason, window_passed
from backend.core.stop_checked_client import StopCheckedClient
from backend.domain.lifecycle import ActionState
from backend.domain.policy.model import Policy, PolicyPack
from backend.domain.resources import Resource, ResourceKind
from backend.providers.aws.describe import jsonable
from backend.providers.aws.operations import Operation, OperationContext, operation_for
from backend.providers.aws.retry import describe_error
from backend.providers.aws.session import AccountTarget, AwsClients, role_arn_for

if TYPE_CHECKING:
    from backend.core.action_engine import ActionOutcome
    from backend.core.safety_checker import SafetyChecker

S = ActionState
log = structlog.get_logger(__name__)
Clock = Callable[[], dt.datetime]


def resource_dict(resource: Resource) -> dict[str, Any]:
    return {**jsonable(asdict(resource)), "kind": resource.kind.value}


def resource_from(data: dict[str, Any]) -> Resource:
    parse = dt.datetime.fromisoformat
    return Resource(
        kind=ResourceKind(data["kind"]),
        resource_id=data["resource_id"],
        account_id=data["account_id"],
        region=data["region"],
        state=data["state"],
        tags=data.get("tags") or {},
        attributes=data.get("attributes") or {},
        created_at=parse(data["created_at"]) if data.get("created_at") else None,
        state_changed_at=(
            parse(data["state_changed_at"]) if data.get("state_changed_at") else None
        ),
    )


class WrongAccountError(RuntimeError):
    """The credentials at hand act in another account than the action's."""


class ExecutionContext:
    def __init__(
        self,
        settings: Settings,
        clients: AwsClients,
        emergency: EmergencyStop,
        pack: PolicyPack | None,
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.emergency = emergency
        self._pack = pack

    def pack(self) -> PolicyPack:
        """The given pack, else the configured one with the database's state applied (a
        disabled or paused policy has enabled=False)."""
        if self._pack is None:
            from pathlib import Path

            from backend.core.policy_manager import PolicyManager
            from backend.core.types import utcnow

            paths = [Path(p) for p in self.settings.policy_paths]
            with session_scope() as session:
                self._pack = PolicyManager(paths).effective_pack(session, utcnow())
        return self._pack

    def policy(self, name: str) -> Policy | None:
        return self.pack().by_name.get(name)

    def op_context(
        self, row: ActionRow, guard: Callable[[str], None] | None, *, check_stop: bool = False
    ) -> OperationContext:
        """With `check_stop`, every AWS call (reads too) first checks the emergency stop."""
        target = self._target(row.account_id)

        def client_for(service: str) -> Any:
            self._check_account(target)
            client = self.clients.client(target, service, row.region)
            return (
                StopCheckedClient(client, service, self.emergency.check) if check_stop else client
            )

        return OperationContext(
            client_for=client_for,
            account_id=row.account_id,
            region=row.region,
            idempotency_key=row.idempotency_key,
            guard=guard,
            made=guard.note_made if isinstance(guard, Guard) else None,
        )

    def _target(self, account: str) -> AccountTarget:
        role = self.settings.role_name_for_accounts
        if role and account in self.settings.accounts:
            arn = role_arn_for(account, role, self.settings.cost_optimization_role_arn)
            return AccountTarget(account, arn)
        if self.settings.cost_optimization_role_arn and not self.settings.accounts:
            return AccountTarget(account, self.settings.cost_optimization_role_arn)
        return AccountTarget(account, None)

    def _check_account(self, target: AccountTarget) -> None:
        """Never act on, nor judge, a resource of one account with another's credentials: a
        resource of the same id there (an RDS name, say) is another resource."""
        if target.role_arn is not None:
            arn = target.role_arn.split(":")
            acting = arn[4] if len(arn) > 4 and arn[4] else target.account_id
        else:
            acting = self.clients.caller_account()
        if acting != target.account_id:
            raise WrongAccountError(
                f"the action is for account {target.account_id}, but the credentials act in "
                f"account {acting}: refused (configure FINOPS_ACCOUNTS and the role name for "
                f"{target.account_id}, or run with its credentials)"
            )

    # -- dry run ------------------------------------------------------------------------
    def dry_run_one(
        self,
        action_id: int,
        run_id: int | None,
        safety: SafetyChecker,
        audit: AuditLogger,
        worker: str,
        clock: Clock,
    ) -> ActionOutcome:
        from backend.core.action_engine import ActionOutcome

        with session_scope() as session:
            row = _row(session, action_id)
            op = operation_for(row.action, ResourceKind(row.kind))
            # No guard: a dry run only reads; a changing call would be a bug, so refuse it.
            ctx = self.op_context(row, guard=refuse_changes)
            judgement, _ = safety.judge_before_execution(
                session, row, self.policy(row.policy_name), op, ctx
            )
            audit.record(
                "execution",
                subject_type="action",
                subject_id=row.id,
                actor=worker,
                outcome="dry-run",
                details={
                    "run": run_id,
                    "would": "execute" if judgement.allowed else "block",
                    "summary": judgement.summary(),
                },
                session=session,
            )
        if judgement.allowed:
            return ActionOutcome(action_id, "would-execute", f"{row.action} {row.resource_id}")
        return ActionOutcome(action_id, "would-block", judgement.summary())

    # -- live ---------------------------------------------------------------------------
    def execute_one(
        self,
        action_id: int,
        run_id: int | None,
        safety: SafetyChecker,
        audit: AuditLogger,
        worker: str,
        clock: Clock,
    ) -> ActionOutcome:
        from backend.core.action_engine import ActionOutcome

        now = clock()
        held = why_held(action_id, now)
        if held:
            return ActionOutcome(action_id, "held", held)  # still approved: it waits
        with session_scope() as session:
            if not claim(session, action_id, worker, now, self.settings):
                late = session.get(ActionRow, action_id, with_for_update=True)
                if late is not None and late.state in WAITING and window_passed(late, now):
                    # Too late for its scheduled run: blocked now, with the reason.
                    block(session, late, audit, now)
                    return ActionOutcome(action_id, "blocked", missed_reason(late))
                return ActionOutcome(
                    action_id,
                    "skipped",
                    "not due (not approved, approval expired, or in its notice period), "
                    "or claimed elsewhere",
                )
            row = _row(session, action_id)
            row.run_id = run_id
            audit.record(
                "execution",
                subject_type="action",
                subject_id=row.id,
                actor=worker,
                outcome="claimed",
                details={"run": run_id},
                session=session,
            )
            ours = Claim(action_id, worker, row.attempts)
        guard = Guard(self.emergency, counting_made=False, claim=ours)
        try:
            try:
                return self._steps(action_id, safety, audit, worker, clock, guard)
            except ClaimLostError:
                raise  # nothing more is written: the action is in other hands
            except EmergencyStopEngaged as exc:
                return interrupted(action_id, audit, worker, guard, str(exc))
            except ChangeUnverifiedError as exc:
                return failed(
                    action_id,
                    audit,
                    worker,
                    f"the change was made but could not be verified: {exc}; the "
                    "pre-state and backup are kept, roll back to undo",
                    guard,
                    changed=True,
                )
            except Exception as exc:  # noqa: BLE001 - recorded as a failure, backup kept
                refused = isinstance(exc, ClientError)  # AWS answered no: it did not do it
                return failed(action_id, audit, worker, describe_error(exc), guard, refused=refused)
        except ClaimLostError as exc:  # from the steps, or from writing how they ended
            return claim_lost(action_id, audit, worker, str(exc))

    def _judge(
        self,
        session: Session,
        row: ActionRow,
        op: Operation,
        ctx: OperationContext,
        safety: SafetyChecker,
        audit: AuditLogger,
        stage: str,
    ) -> tuple[Resource | None, str]:
        """Every rule on a fresh describe, recorded; blocked: the action moves to BLOCKED and
        (None, why) comes back, else (the fresh resource, "")."""
        judgement, fresh = safety.judge_before_execution(
            session, row, self.policy(row.policy_name), op, ctx
        )
        row.safety_verdict = judgement.as_dict()
        summary = judgement.summary()
        allowed = judgement.allowed and fresh is not None
        audit.record(
            "safety_verdict",
            subject_type="action",
            subject_id=row.id,
            actor="safety",
            outcome="allowed" if allowed else "blocked",
            details={"stage": stage, "summary": summary},
            session=session,
        )
        if allowed:
            return fresh, ""
        why = summary if stage == "execute" else f"{stage}: {summary}"
        transition(
            session,
            row,
            S.BLOCKED,
            actor="safety",
            audit=audit,
            event="safety_verdict",
            details={"summary": why},
        )
        return None, why

    def _steps(
        self,
        action_id: int,
        safety: SafetyChecker,
        audit: AuditLogger,
        worker: str,
        clock: Clock,
        guard: Guard,
    ) -> ActionOutcome:
        from backend.core.action_engine import ActionOutcome

        with session_scope() as session:
            row = guard.row(session, action_id)
            op = operation_for(row.action, ResourceKind(row.kind))
            ctx = self.op_context(row, guard, check_stop=True)
            # Once the change is made, reading it back cannot change anything and makes the
            # record true, so the verification runs even under a stop (changes refused).
            verify_ctx = self.op_context(row, refuse_changes)
            fresh, blocked = self._judge(session, row, op, ctx, safety, audit, "execute")
            if fresh is None:
                return ActionOutcome(action_id, "blocked", blocked)
            # A retry after an attempt that began its change resumes that change: the first
            # attempt's pre-state and backup stay what a rollback restores (a resize that
            # failed to start again leaves a stopped instance of the new type: not "before").
            resumed = bool(row.pre_state) and change_started(row.post_state)
            if not resumed:
                row.pre_state = resource_dict(fresh)
            params = dict(row.params or {})
            audit.record(
                "execution",
                subject_type="action",
                subject_id=row.id,
                actor=worker,
                outcome="pre-state kept" if resumed else "pre-state recorded",  # 32 at most
                details={"state": fresh.state},
                session=session,
            )
        backup = op.backup(ctx, fresh)
        with session_scope() as session:
            row = guard.row(session, action_id)
            if not (resumed and row.backup_ref):
                row.backup_ref = backup
            audit.record(
                "execution",
                subject_type="action",
                subject_id=row.id,
                actor=worker,
                outcome="backup taken",
                details={"backup": short_backup(backup)},
                session=session,
            )
            kept = dict(row.pre_state) if resumed and row.pre_state else None
        # Committed before judging again: an audit event holds the audit chain's lock until
        # its transaction ends, and the judge calls AWS; one slow answer would otherwise hold
        # every audited write (the emergency stop's included) behind it.
        if backup is not None:
            with session_scope() as session:
                row = guard.row(session, action_id)
                # A snapshot or an image can take many minutes, and an owner may tag the
                # resource meanwhile: judged again on a fresh describe, just before the call.
                fresh, blocked = self._judge(
                    session, row, op, ctx, safety, audit, "after the backup"
                )
                if fresh is None:
                    return ActionOutcome(
                        action_id, "blocked", f"{blocked}; the backup {backup} is kept"
                    )
                if not resumed:
                    row.pre_state = resource_dict(fresh)
        original = resource_from(kept) if kept else fresh
        guard.counting_made = True
        op.execute(ctx, original, params)
        with session_scope() as session:
            # Recorded before verifying: if the check fails, the record still says AWS changed.
            row = guard.row(session, action_id)
            row.post_state = {"change_started": True, "change_made": True, "verified": False}
            audit.record(
                "execution",
                subject_type="action",
                subject_id=row.id,
                actor=worker,
                outcome="change made",
                details={"changed": True, "verified": False},
                session=session,
            )
        try:
            post = op.verify(verify_ctx, fresh.resource_id, params)
        except Exception as exc:
            raise ChangeUnverifiedError(describe_error(exc)) from exc
        with session_scope() as session:
            row = guard.row(session, action_id)
            row.post_state = resource_dict(post) if post is not None else {"gone": True}
            row.finished_at = clock()
            row.realized_monthly_savings = None  # measured later, never assumed
            transition(
                session,
                row,
                S.SUCCEEDED,
                actor=worker,
                audit=audit,
                event="execution",
                details={
                    "after": post.state if post else "gone",
                    "backup": short_backup(row.backup_ref),
                },
            )
        return ActionOutcome(action_id, "succeeded", f"{row.action} {row.resource_id}")

    # -- undo ---------------------------------------------------------------------------
    def rollback_one(
        self, action_id: int, actor: str, audit: AuditLogger, clock: Clock
    ) -> ActionOutcome:
        from backend.core.action_undo import rollback_one

        return rollback_one(self, action_id, actor, audit)


def _row(session: Session, action_id: int) -> ActionRow:
    row = session.get(ActionRow, action_id)
    if row is None:
        raise LookupError(f"no action {action_id}")
    return row


def refuse_changes(call: str) -> None:
    """The guard of a read-only use of an operation (dry run, judging, reconciling)."""
    raise RuntimeError(f"read-only: refusing the changing call {call}")
