"""Plan: open opportunities become actions; people approve or reject them.

A policy's mode decides: `report` makes no action, `approval` waits for a person, `auto`
is approved by the policy itself (unless the action is irreversible or high-risk). Each
action is judged by the safety rules at planning; a blocked one is kept with its reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import Settings, get_settings
from backend.core.action_transition import transition
from backend.core.automation_audit_logger import AuditLogger
from backend.core.freshness import Observed, planning_evidence, planning_metric_stamps
from backend.core.models import ActionRow, OpportunityRow, ResourceRow
from backend.core.owner_notice import SCHEDULED_TAG, OwnerNotice, marked_action
from backend.core.repositories import to_resource
from backend.core.safety_checker import SafetyChecker
from backend.core.schedule_window import (
    RunWindow,
    block_missed,
    current_window,
    missed_reason,
    outside_reason,
    window_passed,
)
from backend.core.types import utcnow
from backend.domain.lifecycle import ActionState, policy_approver
from backend.domain.policy.model import Policy, PolicyPack
from backend.domain.resources import ResourceKind
from backend.domain.safety import needs_approval

S = ActionState
log = structlog.get_logger(__name__)


class ApprovalError(PermissionError):
    """An approval or rejection that the rules do not allow; the message says which."""


class RunWindowPassedError(ApprovalError):
    """An approval of a scheduled policy's action whose run window has passed."""


@dataclass
class PlanResult:
    created: list[int] = field(default_factory=list)
    approved: list[int] = field(default_factory=list)
    awaiting: list[int] = field(default_factory=list)
    blocked: dict[int, str] = field(default_factory=dict)
    existing: int = 0
    unmarked: list[int] = field(default_factory=list)  # actions whose owner mark came off
    # scheduled policies not planned: not within their run window now (name -> why)
    outside_window: dict[str, str] = field(default_factory=dict)


def idempotency_key(
    policy: str,
    row: ResourceRow,
    action: str,
    params: dict[str, Any],
    found: dt.datetime,
    slot: str | None = None,
) -> str:
    """The same opportunity always plans to the same action, so a re-plan adds nothing.

    A scheduled policy's `slot` (its run's local time) is part of it: the off-hours stop
    of tonight is not yesterday's, though the instance's opportunity is the same one."""
    parts = [policy, row.account_id, row.region, row.kind, row.resource_id, action, params]
    parts.append(found.isoformat())
    if slot is not None:
        parts.append(slot)
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class ActionPlanner:
    def __init__(
        self,
        *,
        settings: Settings | None = None,
        safety: SafetyChecker | None = None,
        audit: AuditLogger | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        owner_notice: OwnerNotice | None = None,
    ) -> None:
        self._settings = settings
        self._safety = safety or SafetyChecker(settings=settings, clock=clock)
        self._audit = audit or AuditLogger()
        self._clock = clock
        self._owner_notice = owner_notice

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    def plan(
        self,
        session: Session,
        pack: PolicyPack,
        *,
        requested_by: str = "system",
        notify_owners: bool = False,
    ) -> PlanResult:
        """Actions for the open opportunities of the acting policies, each judged by the
        safety rules. Live (owners told, not a dry run) it commits the session as it goes:
        the plan first, then each owner notice and each mark taken off on its own."""
        now = self._clock()
        out = PlanResult()
        live = notify_owners or not self.settings.dry_run
        acting = {p.name: p for p in pack.enabled() if p.mode != "report"}
        windows: dict[str, RunWindow] = {}
        for policy in list(acting.values()):
            if policy.schedule is None:
                continue
            window = current_window(policy.schedule, now, self.settings)
            if window is None:
                # A scheduled policy acts at its time only, whoever asks for a plan.
                del acting[policy.name]
                why = outside_reason(policy.schedule, now, self.settings)
                out.outside_window[policy.name] = why
                log.info("scheduled policy not planned", policy=policy.name, reason=why)
            else:
                windows[policy.name] = window
        to_notice = self._plan_open(session, acting, windows, out, now, requested_by, live=live)
        if not live:
            if to_notice:
                self._give_notice(session, to_notice, out, live=False)
            return out
        # Committed before anyone is told or any mark is taken off: no lock (the audit
        # chain's, the opportunities') is held over AWS calls and mail, which take minutes
        # when either is slow. An action whose notice is never recorded (a crash in between)
        # cannot run: execution asks for a delivered notice.
        session.commit()
        if to_notice:
            self._give_notice(session, to_notice, out, live=True)
        # After planning: a blocked action planned again keeps its mark; one still blocked,
        # or one that ran, will not run, or never committed, loses it.
        out.unmarked = self._notice().unmark_finished(session)
        return out

    def _plan_open(
        self,
        session: Session,
        acting: dict[str, Policy],
        windows: dict[str, RunWindow],
        out: PlanResult,
        now: dt.datetime,
        requested_by: str,
        *,
        live: bool,
    ) -> list[ActionRow]:
        """Plan the acting policies' open opportunities; the actions whose owner must be told
        (see owner_notice.py)."""
        to_notice: list[ActionRow] = []
        if not acting:
            return to_notice
        found = session.execute(
            select(OpportunityRow, ResourceRow)
            .join(ResourceRow, ResourceRow.id == OpportunityRow.resource_pk)
            .where(
                OpportunityRow.status == "open",
                OpportunityRow.policy_name.in_(acting),
                ResourceRow.gone_at.is_(None),
            )
        ).all()
        # In the order they were found: the oldest first, then the pack's policy order, then
        # the resources' (ids are keys, no longer the order of discovery: migration 0011).
        order = {name: i for i, name in enumerate(acting)}
        rows = sorted(
            found, key=lambda r: (r[0].first_found, order[r[0].policy_name], r[0].resource_pk)
        )
        stamps = planning_metric_stamps(session, acting)
        for opp, resource in rows:
            policy = acting[opp.policy_name]
            window = windows.get(policy.name)
            slot = window.slot if window is not None else None
            key = idempotency_key(
                policy.name, resource, opp.action, opp.params, opp.first_found, slot
            )
            existing = session.scalars(
                select(ActionRow).where(ActionRow.idempotency_key == key)
            ).first()
            if existing is not None and existing.state != S.BLOCKED:
                out.existing += 1
                if live and policy.notice.notify and _unannounced(existing, resource):
                    # Planned, but its owner was never told: planned in a dry run, or the
                    # process stopped between the plan's commit and the notice. Told now,
                    # and the grace period runs from now.
                    grace = now + dt.timedelta(days=policy.notice.grace_days)
                    existing.not_before = max(existing.not_before or grace, grace)
                    to_notice.append(existing)
                continue
            if existing is not None:
                # A blocked action planned again is decided afresh, under the policy as it
                # is now: its mode may have gone from auto to approval, and an approval
                # given before the block is not one for what is decided now.
                existing.mode, existing.risk = policy.mode, policy.risk
                existing.approved_by = existing.approved_at = existing.approval_expires_at = None
            action = existing or self._new_action(
                session,
                policy.name,
                policy.mode,
                policy.risk,
                opp,
                resource,
                key,
                requested_by,
                now,
            )
            if window is not None:
                action.slot, action.not_after = window.slot, window.ends
            if policy.notice.notify and (action.not_before is None or action.state == S.BLOCKED):
                # The grace period runs from the notice the owner gets now: a blocked action
                # (its notice failed, or a rule said no) planned again later must not come
                # due the minute its owner is first told.
                grace = now + dt.timedelta(days=policy.notice.grace_days)
                action.not_before = max(action.not_before or grace, grace)
            evidence = planning_evidence(policy, opp, resource, stamps)
            self._decide(session, action, to_resource(resource), out, now, evidence)
            if policy.notice.notify and action.state != S.BLOCKED:
                to_notice.append(action)
        return to_notice

    # --- owner notice: mark, notify; a notice that cannot be given blocks the action ------
    def _notice(self) -> OwnerNotice:
        if self._owner_notice is None:
            self._owner_notice = OwnerNotice(
                settings=self._settings, audit=self._audit, clock=self._clock
            )
        return self._owner_notice

    def _give_notice(
        self, session: Session, actions: list[ActionRow], out: PlanResult, *, live: bool
    ) -> None:
        # Marks are made in this transaction; if it does not commit, OwnerNotice takes them
        # off again as it ends (see owner_notice.py).
        result = self._notice().give(session, actions, live=live)
        for action_id, reason in result.blocked.items():
            for queue in (out.created, out.approved, out.awaiting):
                if action_id in queue:
                    queue.remove(action_id)
            out.blocked[action_id] = f"owner-notice: {reason}"

    # --- end of owner notice ---------------------------------------------------------------

    def _new_action(
        self,
        session: Session,
        policy: str,
        mode: str,
        risk: str,
        opp: OpportunityRow,
        resource: ResourceRow,
        key: str,
        requested_by: str,
        now: dt.datetime,
    ) -> ActionRow:
        row = ActionRow(
            idempotency_key=key,
            opportunity_id=opp.id,
            policy_name=policy,
            account_id=resource.account_id,
            region=resource.region,
            kind=resource.kind,
            resource_id=resource.resource_id,
            action=opp.action,
            params=opp.params,
            mode=mode,
            state=S.PROPOSED.value,
            risk=risk,
            requested_by=requested_by,
            estimated_monthly_savings=opp.estimated_monthly_savings,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
        self._audit.record(
            "action_proposed",
            subject_type="action",
            subject_id=row.id,
            actor=requested_by,
            outcome="proposed",
            details={
                "policy": policy,
                "action": row.action,
                "resource": row.resource_id,
                "params": row.params,
                "savings": row.estimated_monthly_savings,
            },
            session=session,
        )
        return row

    def _decide(
        self,
        session: Session,
        row: ActionRow,
        resource: Any,
        out: PlanResult,
        now: dt.datetime,
        evidence: Observed,
    ) -> None:
        # Stale evidence blocks with its age as the reason; planned again after a good scan,
        # the blocked action is decided afresh (see _plan_open).
        judgement = self._safety.judge_planned(row, resource, observed=evidence)
        row.safety_verdict = judgement.as_dict()
        # At planning, a missing approval is the normal case: it decides the queue, not a block.
        blocking = [v for v in judgement.blocking if v.rule.value != "approval-required"]
        outcome = "blocked" if blocking else "allowed" if judgement.allowed else "needs approval"
        self._audit.record(
            "safety_verdict",
            subject_type="action",
            subject_id=row.id,
            actor="safety",
            outcome=outcome,
            details={"stage": "plan", "summary": judgement.summary()},
            session=session,
        )
        if blocking:
            if row.state != S.BLOCKED:
                transition(
                    session,
                    row,
                    S.BLOCKED,
                    actor="safety",
                    audit=self._audit,
                    event="safety_verdict",
                    details={"stage": "plan"},
                    now=now,
                )
            out.blocked[row.id] = "; ".join(f"{v.rule.value}: {v.reason}" for v in blocking)
            return
        auto = row.mode == "auto" and not needs_approval(
            row.action, ResourceKind(row.kind), row.risk
        )
        if auto:
            row.approved_by = policy_approver(row.policy_name)
            row.approved_at = now
            row.approval_expires_at = self._expiry(row, now)
            transition(
                session,
                row,
                S.APPROVED,
                actor=row.approved_by,
                audit=self._audit,
                event="approval",
                now=now,
            )
            out.approved.append(row.id)
        else:
            transition(
                session,
                row,
                S.AWAITING_APPROVAL,
                actor="system",
                audit=self._audit,
                event="action_proposed",
                now=now,
            )
            out.awaiting.append(row.id)
        out.created.append(row.id)

    def approve(self, session: Session, action_id: int, approver: str) -> ActionRow:
        row = self._get(session, action_id)
        if row.state != S.AWAITING_APPROVAL:
            raise ApprovalError(f"action {action_id} is {row.state}, not awaiting approval")
        if approver == row.requested_by:
            raise ApprovalError(
                f"{approver} requested action {action_id} and cannot also "
                "approve it (separation of duties)"
            )
        now = self._clock()
        if window_passed(row, now):
            raise RunWindowPassedError(f"action {action_id} {missed_reason(row)}")
        row.approved_by, row.approved_at = approver, now
        row.approval_expires_at = self._expiry(row, now)
        transition(
            session,
            row,
            S.APPROVED,
            actor=approver,
            audit=self._audit,
            event="approval",
            details={"expires": row.approval_expires_at.isoformat()},
            now=now,
        )
        return row

    def reject(self, session: Session, action_id: int, actor: str, reason: str) -> ActionRow:
        row = self._get(session, action_id)
        if row.state not in (S.AWAITING_APPROVAL, S.APPROVED):
            raise ApprovalError(
                f"action {action_id} is {row.state}; only a waiting or "
                "approved action can be rejected"
            )
        if row.state == S.APPROVED:
            # rejecting an approved action withdraws it: back to the queue, then rejected
            transition(
                session,
                row,
                S.AWAITING_APPROVAL,
                actor=actor,
                audit=self._audit,
                event="rejection",
                details={"reason": reason},
            )
        transition(
            session,
            row,
            S.REJECTED,
            actor=actor,
            audit=self._audit,
            event="rejection",
            details={"reason": reason},
        )
        return row

    def _expiry(self, row: ActionRow, now: dt.datetime) -> dt.datetime:
        """The end of an approval given now, by a policy or a person: the TTL counted from
        when the action may run (after the owner's notice; counted from now it would lapse
        during the grace period), and never past its run window."""
        due = max(now, row.not_before or now)
        expires = due + dt.timedelta(hours=self.settings.approval_ttl_hours)
        return min(expires, row.not_after) if row.not_after is not None else expires

    def expire_approvals(self, session: Session) -> int:
        """Block the actions whose run window passed, then send expired approvals back to
        the queue; the number of approvals that expired."""
        now = self._clock()
        blocked = block_missed(session, self._audit, now)
        if blocked:
            log.warning("scheduled actions missed their run window", actions=blocked)
        expired = session.scalars(
            select(ActionRow).where(
                ActionRow.state == S.APPROVED,
                ActionRow.approval_expires_at.is_not(None),
                ActionRow.approval_expires_at <= now,
            )
        ).all()
        for row in expired:
            row.approved_by = row.approved_at = row.approval_expires_at = None
            transition(
                session,
                row,
                S.AWAITING_APPROVAL,
                actor="system",
                audit=self._audit,
                event="approval",
                details={"reason": "approval expired"},
                now=now,
            )
        return len(expired)

    @staticmethod
    def _get(session: Session, action_id: int) -> ActionRow:
        row = session.get(ActionRow, action_id)
        if row is None:
            raise LookupError(f"no action {action_id}")
        return row


def _unannounced(action: ActionRow, resource: ResourceRow) -> bool:
    """An action still to run whose resource carries no mark of it: its owner was not told
    (the inventory has the mark once the notice was given, and after any scan)."""
    if action.state not in (S.AWAITING_APPROVAL, S.APPROVED):
        return False
    return marked_action((resource.tags or {}).get(SCHEDULED_TAG)) != action.id
