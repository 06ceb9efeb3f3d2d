"""Owner notice (Janitor Monkey style): mark the resource, tell its owner, wait, re-check, act.

At planning, each action whose policy asks for notice gets its resource tagged
`finops:scheduled-action` and its owner told through NotificationService.notify_owner. The
action may not run before `not_before` (the engine's due query), and at execution the safety
re-check spares a resource that its owner opted out or that no longer qualifies. Without
anyone to tell, or when the notice was not delivered, the action is blocked so a person looks.
`unmark_resolved` takes the tag off again when the action will not happen.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import Settings, get_settings
from backend.core.action_planner import transition
from backend.core.automation_audit_logger import AuditLogger
from backend.core.emergency_stop import EmergencyStop, EmergencyStopEngaged
from backend.core.execution_context import ExecutionContext
from backend.core.models import ActionRow, OpportunityRow, ResourceRow
from backend.core.notification_service import NotificationService
from backend.core.notification_settings import owner_recipient
from backend.core.repositories import to_resource
from backend.core.types import utcnow
from backend.domain.lifecycle import ActionState
from backend.domain.resources import ResourceKind
from backend.providers.aws.operations import ResourceGone, operation_for
from backend.providers.aws.retry import describe_error
from backend.providers.aws.session import AwsClients

S = ActionState
SCHEDULED_TAG = "finops:scheduled-action"
OWNER_TAGS = ("owner", "Owner", "finops:owner")
NO_OWNER = "no owner to notify and no fallback contact"
NOT_NOTIFIED = "owner could not be notified"
# Once the action will not happen, its mark must go: the owner would otherwise keep waiting.
_UNMARK_STATES = (S.REJECTED.value, S.BLOCKED.value)

NotifierFactory = Callable[[Session], NotificationService]


@dataclass
class NoticeResult:
    noticed: list[int] = field(default_factory=list)
    blocked: dict[int, str] = field(default_factory=dict)
    would: list[int] = field(default_factory=list)  # dry-run: recorded, nothing changed


def owner_of(tags: Mapping[str, str]) -> str | None:
    """The owner tag's value (an email or a team name), or None."""
    return next((tags[k].strip() for k in OWNER_TAGS if (tags.get(k) or "").strip()), None)


def scheduled_value(action: ActionRow) -> str:
    when = action.not_before or action.created_at
    return f"{action.action} on {when:%Y-%m-%d} (action {action.id})"


class OwnerNotice:
    def __init__(
        self,
        *,
        settings: Settings | None = None,
        audit: AuditLogger | None = None,
        emergency: EmergencyStop | None = None,
        clients: AwsClients | None = None,
        notifier: NotifierFactory | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._audit = audit or AuditLogger()
        self._emergency = emergency or EmergencyStop(audit=self._audit)
        self._clients = clients
        self._notifier = notifier or _same_transaction(clock)
        self._clock = clock

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    def _context(self) -> ExecutionContext:
        if self._clients is None:
            self._clients = AwsClients(endpoint_url=self.settings.aws_endpoint_url)
        # No pack: marking judges nothing by policy, it only needs the AWS clients.
        return ExecutionContext(self.settings, self._clients, self._emergency, None)

    # -- at planning --------------------------------------------------------------------
    def give(self, session: Session, actions: list[ActionRow], *, live: bool) -> NoticeResult:
        """Notice for newly planned actions. `live` False: only audit what would happen."""
        out = NoticeResult()
        notifier: NotificationService | None = None
        for action in actions:
            resource = self._resource(session, action)
            owner = owner_of(resource.tags if resource else {})
            if notifier is None:
                notifier = self._notifier(session)
            recipient, why = owner_recipient(owner, notifier.settings.fallback_contact)
            if recipient is None:
                # Checked before marking: a resource nobody is told about is not marked.
                reason = NO_OWNER if owner is None else f"{NOT_NOTIFIED}: {why}"
                self._block(session, action, reason, out)
                continue
            notice = {
                "owner": owner,
                "recipient": recipient,
                "tag": {SCHEDULED_TAG: scheduled_value(action)},
                "not_before": action.not_before.isoformat() if action.not_before else None,
            }
            if not live:
                self._record(
                    session,
                    action,
                    "dry-run",
                    {**notice, "would": f"would notify {recipient} and mark {action.resource_id}"},
                )
                out.would.append(action.id)
                continue
            if resource is None:
                self._block(session, action, f"{NOT_NOTIFIED}: resource not in the inventory", out)
                continue
            failure = self._mark(session, action, resource)
            if failure:
                self._block(session, action, f"resource could not be marked: {failure}", out)
                continue
            self._record(session, action, "marked", notice)
            results = notifier.notify_owner(
                action.resource_id,
                owner,
                action.action,
                action.not_before or self._clock(),
                {"policy": action.policy_name, "action id": action.id},
            )
            delivered = bool(results) and all(r.delivered for r in results)
            details = [r.line() for r in results]
            if not delivered:
                # not_before stays; a person decides whether to go on without the notice
                self._block(session, action, NOT_NOTIFIED, out, {"delivery": details})
                continue
            self._record(session, action, "notified", {"recipient": recipient, "delivery": details})
            out.noticed.append(action.id)
        return out

    # -- later --------------------------------------------------------------------------
    def unmark_resolved(self, session: Session) -> list[int]:
        """Remove the mark for actions rejected, blocked, or whose opportunity resolved."""
        rows = session.execute(
            select(ActionRow, OpportunityRow, ResourceRow)
            .join(OpportunityRow, OpportunityRow.id == ActionRow.opportunity_id)
            .join(ResourceRow, ResourceRow.id == OpportunityRow.resource_pk)
            .where(
                ActionRow.state.in_(_UNMARK_STATES)
                | ((OpportunityRow.status != "open") & ActionRow.state.not_in(_DONE))
            )
            .order_by(ActionRow.id)
        )
        done: list[int] = []
        ctx = self._context()
        for action, opp, resource in rows:
            mine = f"(action {action.id})"
            if mine not in (resource.tags or {}).get(SCHEDULED_TAG, ""):
                continue
            op = operation_for("untag", ResourceKind(action.kind))
            op_ctx = ctx.op_context(action, self._guard)
            try:
                fresh = op.describe(op_ctx, action.resource_id)
                # only our own mark: a newer action may have marked it since
                if mine in fresh.tags.get(SCHEDULED_TAG, ""):
                    op.execute(op_ctx, fresh, {"key": SCHEDULED_TAG})
            except ResourceGone:
                pass
            except EmergencyStopEngaged:
                raise
            except Exception as exc:  # noqa: BLE001 - left marked, retried next time
                self._record(session, action, "unmark failed", {"error": describe_error(exc)})
                continue
            resource.tags = {k: v for k, v in (resource.tags or {}).items() if k != SCHEDULED_TAG}
            why = action.state if action.state in _UNMARK_STATES else f"opportunity {opp.status}"
            self._record(session, action, "unmarked", {"why": why, "tag": SCHEDULED_TAG})
            done.append(action.id)
        return done

    # -- plumbing -----------------------------------------------------------------------
    def _guard(self, call: str) -> None:
        self._emergency.check(call)  # as in execution: before every changing AWS call

    @staticmethod
    def _resource(session: Session, action: ActionRow) -> ResourceRow | None:
        return session.scalars(
            select(ResourceRow)
            .join(OpportunityRow, OpportunityRow.resource_pk == ResourceRow.id)
            .where(OpportunityRow.id == action.opportunity_id)
        ).first()

    def _mark(self, session: Session, action: ActionRow, resource: ResourceRow) -> str | None:
        """Tag the resource in AWS; None, or why it could not be marked."""
        params = {"key": SCHEDULED_TAG, "value": scheduled_value(action)}
        try:
            op = operation_for("mark", ResourceKind(action.kind))
            ctx = self._context().op_context(action, self._guard)
            self._emergency.check("marking a resource")
            op.execute(ctx, to_resource(resource), params)
            op.verify(ctx, action.resource_id, params)
        except Exception as exc:  # noqa: BLE001 - any failure: the owner was not told
            return describe_error(exc) if not isinstance(exc, KeyError) else str(exc)
        # keep the inventory in step, so unmark_resolved finds the mark without a rescan
        resource.tags = {**(resource.tags or {}), SCHEDULED_TAG: params["value"]}
        return None

    def _record(
        self, session: Session, action: ActionRow, outcome: str, notice: Mapping[str, object]
    ) -> None:
        self._audit.record(
            "action_proposed",
            subject_type="action",
            subject_id=action.id,
            actor="owner-notice",
            outcome=outcome,
            details={"resource": action.resource_id, "notice": notice},
            session=session,
        )

    def _block(
        self,
        session: Session,
        action: ActionRow,
        reason: str,
        out: NoticeResult,
        more: dict[str, object] | None = None,
    ) -> None:
        if action.state != S.BLOCKED:
            transition(
                session,
                action,
                S.BLOCKED,
                actor="owner-notice",
                audit=self._audit,
                event="safety_verdict",
                details={"stage": "notice", "reason": reason, **(more or {})},
                now=self._clock(),
            )
        out.blocked[action.id] = reason


_DONE = (S.SUCCEEDED.value, S.FAILED.value, S.ROLLED_BACK.value, S.EXECUTING.value)


def _same_transaction(clock: Callable[[], dt.datetime]) -> NotifierFactory:
    # The notification rows join the planner's transaction: on SQLite a second connection
    # would wait for the planner's write lock. (Joined, not committed: the caller commits.)
    def make(session: Session) -> NotificationService:
        return NotificationService(sessions=lambda: Session(bind=session.connection()), clock=clock)

    return make
