"""Owner notice (Janitor Monkey style): mark the resource, tell its owner, wait, re-check, act.

At planning, each action whose policy asks for notice gets its resource tagged
`finops:scheduled-action` and its owner told through NotificationService.notify_owner (by the
owner's route: a team channel, an address, or the fallback contact). The action may not run
before `not_before` (the engine's due query), and at execution the safety re-check spares a
resource that its owner opted out or that no longer qualifies. Without anyone to tell, or when
the notice was not delivered, the action is blocked so a person looks.

Marks and the database stay in step:
- a live plan commits its actions first; then each one is marked in AWS, its owner told, and
  the outcome recorded and committed, one action at a time, so that no lock is held while
  AWS or the mail server is slow. If an action's transaction does not commit, its mark is
  taken off again as it ends (and audited in a transaction of its own), because nothing
  recorded would announce it;
- `unmark_finished` (run by the planner after it plans) takes a mark off once its action
  succeeded, was rolled back, rejected or blocked, or its opportunity resolved, and also
  any mark naming an action that does not exist (a process that died between marking and
  rolling back, or a savepoint that rolled back), once a scan has put it in the inventory.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog
from sqlalchemy import event, select
from sqlalchemy.orm import Session, SessionTransaction

from backend.config import Settings, get_settings
from backend.core.action_transition import transition
from backend.core.automation_audit_logger import AuditLogger
from backend.core.emergency_stop import EmergencyStop, EmergencyStopEngaged
from backend.core.execution_context import ExecutionContext
from backend.core.models import ActionRow, OpportunityRow, ResourceRow
from backend.core.notification_service import NotificationService
from backend.core.repositories import to_resource
from backend.core.types import utcnow
from backend.domain.lifecycle import ActionState
from backend.domain.resources import Resource, ResourceKind
from backend.providers.aws.operations import ResourceGone, operation_for
from backend.providers.aws.retry import describe_error
from backend.providers.aws.session import AwsClients

log = structlog.get_logger(__name__)

S = ActionState
SCHEDULED_TAG = "finops:scheduled-action"
OWNER_TAGS = ("owner", "Owner", "finops:owner")
NO_OWNER = "no owner to notify and no fallback contact"
NOT_NOTIFIED = "owner could not be notified"
ROLLED_BACK = "the notice's transaction did not commit: nothing recorded announces the action"
NO_ACTION = "no action {id}: its planning never committed"
# Once the action has happened or will not happen, its mark must go: the owner would
# otherwise keep waiting for it. (A failed action may be retried: its mark stays.)
_UNMARK_STATES = (S.SUCCEEDED.value, S.ROLLED_BACK.value, S.REJECTED.value, S.BLOCKED.value)
_IN_FLIGHT = (S.EXECUTING.value, S.FAILED.value)
_MARK_ID = re.compile(r"\(action (\d+)\)\s*$")
_MARKS = "finops_owner_notice_marks"  # session.info: marks made in the open transaction

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


def marked_action(value: str | None) -> int | None:
    """The action id a mark names (`... (action 12)`), or None for a tag we did not write."""
    found = _MARK_ID.search(value or "")
    return int(found.group(1)) if found else None


@dataclass(frozen=True)
class _Mark:
    """Where a mark is, in plain values: the rows are expired once their transaction ends."""

    action_id: int
    account_id: str
    region: str
    kind: str
    resource_id: str

    @classmethod
    def on(cls, resource: ResourceRow, action_id: int) -> _Mark:
        r = resource
        return cls(action_id, r.account_id, r.region, r.kind, r.resource_id)

    def stand_in(self) -> ActionRow:
        # Never added to a session: only what an operation context needs.
        return ActionRow(
            account_id=self.account_id,
            region=self.region,
            kind=self.kind,
            resource_id=self.resource_id,
            idempotency_key=f"unmark-{self.action_id}",
        )


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
        self._notifier = notifier or _own_transactions(clock)
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
        """Notice for newly planned actions. `live` False: only audit what would happen.

        Live, the actions must be committed already, and each one's notice is committed on
        its own: no lock (the audit chain's, SQLite's write lock) is held over the AWS
        tagging and the mail, which take minutes when either is slow.
        """
        out = NoticeResult()
        notifier: NotificationService | None = None
        for action in actions:
            if notifier is None:
                notifier = self._notifier(session)
            self._give_one(session, action, notifier, out, live=live)
            if live:
                session.commit()
        return out

    def _give_one(
        self,
        session: Session,
        action: ActionRow,
        notifier: NotificationService,
        out: NoticeResult,
        *,
        live: bool,
    ) -> None:
        resource = self._resource(session, action)
        owner = owner_of(resource.tags if resource else {})
        route = notifier.settings.owner_route(owner)
        recipient = route.target
        if recipient is None:
            # Checked before marking: a resource nobody is told about is not marked.
            reason = NO_OWNER if owner is None else f"{NOT_NOTIFIED}: {route.note}"
            self._block(session, action, reason, out)
            return
        notice = {
            "owner": owner,
            "recipient": recipient,
            "tag": {SCHEDULED_TAG: scheduled_value(action)},
            "not_before": action.not_before.isoformat() if action.not_before else None,
        }
        if not live:
            would = f"would notify {recipient} and mark {action.resource_id}"
            self._record(session, action, "dry-run", {**notice, "would": would})
            out.would.append(action.id)
            return
        if resource is None:
            self._block(session, action, f"{NOT_NOTIFIED}: resource not in the inventory", out)
            return
        failure = self._mark(action, resource)
        if failure:
            self._block(session, action, f"resource could not be marked: {failure}", out)
            return
        # Taken off again if what follows does not commit: nothing would announce the action.
        self._remember(session, _Mark.on(resource, action.id))
        results = notifier.notify_owner(
            action.resource_id,
            owner,
            action.action,
            action.not_before or self._clock(),
            {"policy": action.policy_name, "action id": action.id},
        )
        # written after the mail: nothing here holds a lock while it is sent
        resource.tags = {**(resource.tags or {}), SCHEDULED_TAG: scheduled_value(action)}
        self._record(session, action, "marked", notice)
        delivered = bool(results) and all(r.delivered for r in results)
        details = [r.line() for r in results]
        if not delivered:
            # not_before stays; a person decides whether to go on without the notice
            self._block(session, action, NOT_NOTIFIED, out, {"delivery": details})
            return
        self._record(session, action, "notified", {"recipient": recipient, "delivery": details})
        out.noticed.append(action.id)

    # -- later --------------------------------------------------------------------------
    def unmark_finished(self, session: Session) -> list[int]:
        """Take off the marks no action needs any more; returns the actions they named.

        Read from the inventory (only marked resources), so a mark AWS has but the inventory
        does not yet know is found after the next scan. Each removal is audited.
        """
        marked = session.scalars(
            select(ResourceRow)
            .where(ResourceRow.tags[SCHEDULED_TAG].as_string().is_not(None))
            .order_by(ResourceRow.id)
        ).all()
        done: list[int] = []
        for resource in marked:
            session.commit()  # the last removal's record: no lock held over the next AWS call
            action_id = marked_action((resource.tags or {}).get(SCHEDULED_TAG))
            if action_id is None:
                continue  # not a mark of ours: someone's own use of the key is left alone
            why = _needless(session, action_id, resource)
            if why is None:
                continue
            try:
                if self._unmark(session, resource, action_id, why):
                    done.append(action_id)
            except EmergencyStopEngaged as exc:
                # Nothing more is called on AWS; the marks are taken off after the resume.
                log.warning("unmarking stopped by the emergency stop", error=str(exc))
                break
        return done

    unmark_resolved = unmark_finished  # the earlier name

    def _unmark(self, session: Session, resource: ResourceRow, action_id: int, why: str) -> bool:
        mark = _Mark.on(resource, action_id)
        details: dict[str, object] = {"why": why, "tag": SCHEDULED_TAG}
        details["value"] = (resource.tags or {}).get(SCHEDULED_TAG)
        tags = {k: v for k, v in (resource.tags or {}).items() if k != SCHEDULED_TAG}
        if resource.gone_at is not None:
            details["note"] = "resource gone: nothing to untag"
        else:
            try:
                fresh = self._untag(mark)
            except EmergencyStopEngaged:
                raise
            except Exception as exc:  # noqa: BLE001 - left marked, retried next time
                self._record(session, mark, "unmark failed", {"error": describe_error(exc)})
                return False
            if fresh is None:
                details["note"] = "resource gone: nothing to untag"
            else:  # the inventory takes what AWS has, less our mark (a newer one stays)
                ours = marked_action(fresh.tags.get(SCHEDULED_TAG)) == action_id
                tags = {k: v for k, v in fresh.tags.items() if not (ours and k == SCHEDULED_TAG)}
        resource.tags = tags
        self._record(session, mark, "unmarked", details)
        return True

    def _untag(self, mark: _Mark) -> Resource | None:
        """Remove the mark if it still names this action; the resource as it was, or None
        when it is gone (a deleted resource has nothing to untag)."""
        op = operation_for("untag", ResourceKind(mark.kind))
        ctx = self._context().op_context(mark.stand_in(), self._guard)
        try:
            fresh = op.describe(ctx, mark.resource_id)
        except ResourceGone:
            return None
        # only this action's mark: a newer action may have marked the resource since
        if marked_action(fresh.tags.get(SCHEDULED_TAG)) == mark.action_id:
            op.execute(ctx, fresh, {"key": SCHEDULED_TAG})
        return fresh

    # -- marks of a transaction that does not commit ---------------------------------------
    def _remember(self, session: Session, mark: _Mark) -> None:
        marks: list[tuple[OwnerNotice, _Mark]] | None = session.info.get(_MARKS)
        if marks is None:
            marks = session.info[_MARKS] = []
            event.listen(session, "after_commit", _committed)
            event.listen(session, "after_transaction_end", _ended)
        marks.append((self, mark))

    def _undo_mark(self, mark: _Mark) -> None:
        """Never raises: it runs while the planner's transaction ends, maybe on an error."""
        try:
            outcome, details = "unmarked", {"why": ROLLED_BACK, "tag": SCHEDULED_TAG}
            try:
                if self._untag(mark) is None:
                    details["note"] = "resource gone: nothing to untag"
            except Exception as exc:  # noqa: BLE001 - the sweep takes it off later
                outcome, details["error"] = "unmark failed", describe_error(exc)
            self._audit.log(
                "action_proposed",
                subject_type="action",
                subject_id=mark.action_id,
                actor="owner-notice",
                outcome=outcome,
                details={"resource": mark.resource_id, "notice": details},
            )
        except Exception as exc:  # noqa: BLE001 - loud, but the original error goes on
            log.error(
                "mark of a rolled-back action not cleaned up",
                resource=mark.resource_id,
                action=mark.action_id,
                error=str(exc),
            )

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

    def _mark(self, action: ActionRow, resource: ResourceRow) -> str | None:
        """Tag the resource in AWS (only there); None, or why it could not be marked."""
        params = {"key": SCHEDULED_TAG, "value": scheduled_value(action)}
        try:
            op = operation_for("mark", ResourceKind(action.kind))
            ctx = self._context().op_context(action, self._guard)
            self._emergency.check("marking a resource")
            op.execute(ctx, to_resource(resource), params)
            op.verify(ctx, action.resource_id, params)
        except Exception as exc:  # noqa: BLE001 - any failure: the owner was not told
            return describe_error(exc) if not isinstance(exc, KeyError) else str(exc)
        return None

    def _record(
        self,
        session: Session,
        action: ActionRow | _Mark,
        outcome: str,
        notice: Mapping[str, object],
    ) -> None:
        self._audit.record(
            "action_proposed",
            subject_type="action",
            subject_id=action.action_id if isinstance(action, _Mark) else action.id,
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


def _needless(session: Session, action_id: int, resource: ResourceRow) -> str | None:
    """Why the mark naming `action_id` on this resource should go, or None to keep it."""
    action = session.get(ActionRow, action_id)
    if action is None:
        return NO_ACTION.format(id=action_id)
    where = (action.account_id, action.region, action.kind, action.resource_id)
    if where != (resource.account_id, resource.region, resource.kind, resource.resource_id):
        return f"action {action_id} is on {action.resource_id}, not on this resource"
    if action.state in _UNMARK_STATES:
        return f"action {action.state}"
    opp = session.get(OpportunityRow, action.opportunity_id)
    status = opp.status if opp is not None else "gone"
    if status != "open" and action.state not in _IN_FLIGHT:
        return f"opportunity {status}"
    return None


def _committed(session: Session) -> None:
    if session.get_nested_transaction() is None:  # a savepoint released is not a commit
        session.info.get(_MARKS, []).clear()


def _ended(session: Session, transaction: SessionTransaction) -> None:
    # After a commit the list is empty (_committed); otherwise the transaction rolled back,
    # or was closed uncommitted, and its marks announce actions that do not exist.
    # (A savepoint's marks wait for the outer end; if that commits, the sweep finds them.)
    if transaction.parent is not None:
        return
    marks: list[tuple[OwnerNotice, _Mark]] = session.info.get(_MARKS, [])
    undo, marks[:] = list(marks), []
    for notice, mark in undo:
        notice._undo_mark(mark)


def _own_transactions(clock: Callable[[], dt.datetime]) -> NotifierFactory:
    # The notification rows are committed on their own, as for any message: a live notice
    # is given with nothing of the planner's uncommitted (see give), so on SQLite there is
    # no write lock of the planner's for them to wait for.
    def make(_session: Session) -> NotificationService:
        return NotificationService(clock=clock)

    return make
