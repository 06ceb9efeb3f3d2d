"""Actions: list and read (viewer); plan and retry (operator); approve, reject and roll
back (approver). The planner and the engines decide; this module maps their answers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.api.deps import Approver, ContextDep, Operator, SessionDep, Viewer
from backend.api.page_cache import FRESH_UNTIL
from backend.api.pagination import Page, Paging, SortParam, json_answer, paginate_query
from backend.api.problems import Problem, not_found
from backend.api.routers import API_PREFIX
from backend.api.schemas import ActionDetail, ActionOut, OutcomeOut, Text
from backend.core.action_planner import ApprovalError, RunWindowPassedError
from backend.core.emergency_stop import EmergencyStopEngaged
from backend.core.models import ActionRow
from backend.core.policy_evaluator import StoredPolicyEvaluator
from backend.core.repositories import lock_opportunities
from backend.core.types import utcnow
from backend.domain.lifecycle import ActionState, IllegalTransitionError
from backend.domain.policy import PolicyValidationError

router = APIRouter(prefix=f"{API_PREFIX}/actions", tags=["actions"])
SORTS = {
    "id": ActionRow.id,
    "created_at": ActionRow.created_at,
    "updated_at": ActionRow.updated_at,
    "state": ActionRow.state,
    "policy": ActionRow.policy_name,
    "estimated_monthly_savings": ActionRow.estimated_monthly_savings,
}


class RejectBody(BaseModel):
    comment: Text = Field(description="Why: kept in the audit log.")


class PlanOut(BaseModel):
    created: list[int]
    approved: list[int]
    awaiting: list[int]
    blocked: dict[int, str]
    existing: int
    expired_approvals: int
    # scheduled policies not planned now: outside their run window (name -> why)
    outside_window: dict[str, str] = {}


@router.get("", response_model=Page[ActionOut])
def list_actions(
    session: SessionDep,
    _: Viewer,
    page: Paging,
    state: Annotated[list[ActionState] | None, Query()] = None,
    policy: Annotated[list[str] | None, Query()] = None,
    account: str | None = None,
    kind: str | None = None,
    requested_by: str | None = None,
    sort: SortParam = None,
) -> Response:
    query = select(ActionRow)
    if state:
        query = query.where(ActionRow.state.in_([s.value for s in state]))
    if policy:
        query = query.where(ActionRow.policy_name.in_(policy))
    if account:
        query = query.where(ActionRow.account_id == account)
    if kind:
        query = query.where(ActionRow.kind == kind)
    if requested_by:
        query = query.where(ActionRow.requested_by == requested_by)
    window = paginate_query(session, query, page, sort, SORTS, ActionRow.id)
    now = utcnow()
    items = [ActionOut.of(r, now) for r in window.rows]
    # approval_expired turns true at approval_expires_at without any write: a kept copy of
    # this page is good until the first of those (page_cache.py).
    turning = [
        r.approval_expires_at
        for r, out in zip(window.rows, items, strict=True)
        if r.state == "approved" and r.approval_expires_at is not None and not out.approval_expired
    ]
    headers = {FRESH_UNTIL: str(min(turning).timestamp())} if turning else None
    return json_answer(window.page(items), headers)


@router.get("/{action_id}", response_model=ActionDetail)
def get_action(action_id: int, session: SessionDep, _: Viewer) -> ActionDetail:
    return ActionDetail.of(_row(session, action_id))


@router.post("/plan", response_model=PlanOut)
def plan(session: SessionDep, context: ContextDep, user: Operator) -> PlanOut:
    """Evaluate the policies that may run now over the stored inventory, then plan actions
    requested by the caller (who therefore cannot approve them)."""
    now = utcnow()
    try:
        pack = context.policies().effective_pack(session, now)
    except PolicyValidationError as exc:
        raise Problem(
            409,
            f"the configured policy pack is refused ({len(exc.problems)} problem(s)); nothing "
            "is planned",
            kind="policy-pack-refused",
            problems=[str(p) for p in exc.problems],
        ) from None
    planner = context.planner()
    # The opportunities' lock before any audit event (expiries are audited): every writer
    # takes the two in this order, so a scan storing its findings cannot deadlock with us.
    lock_opportunities(session)
    expired = planner.expire_approvals(session)
    StoredPolicyEvaluator(session, now=now).run(pack)
    result = planner.plan(session, pack, requested_by=user.username)
    session.commit()
    return PlanOut(
        created=result.created,
        approved=result.approved,
        awaiting=result.awaiting,
        blocked=result.blocked,
        existing=result.existing,
        expired_approvals=expired,
        outside_window=result.outside_window,
    )


@router.post("/{action_id}/approve", response_model=ActionDetail)
def approve(
    action_id: int, session: SessionDep, context: ContextDep, user: Approver
) -> ActionDetail:
    """Approve for the configured time (FINOPS_APPROVAL_TTL_HOURS); not your own request."""
    planner = context.planner()
    planner.expire_approvals(session)  # an expired approval is back in the queue: approvable
    row = _row(session, action_id)
    try:
        planner.approve(session, action_id, user.username)
    except ApprovalError as exc:
        # The planner checks the state first: a waiting action refused means the requester.
        waiting = row.state == ActionState.AWAITING_APPROVAL
        if waiting and not isinstance(exc, RunWindowPassedError):
            raise Problem(403, str(exc), kind="separation-of-duties") from None
        raise Problem(409, str(exc), kind="invalid-state") from None
    session.commit()
    return ActionDetail.of(row)


@router.post("/{action_id}/reject", response_model=ActionDetail)
def reject(
    action_id: int, body: RejectBody, session: SessionDep, context: ContextDep, user: Approver
) -> ActionDetail:
    row = _row(session, action_id)
    try:
        context.planner().reject(session, action_id, user.username, body.comment.strip())
    except (ApprovalError, IllegalTransitionError) as exc:
        raise Problem(409, str(exc), kind="invalid-state") from None
    session.commit()
    return ActionDetail.of(row)


@router.post("/{action_id}/retry", response_model=OutcomeOut)
def retry(action_id: int, context: ContextDep, user: Operator) -> OutcomeOut:
    """A failed action, judged again on a fresh describe, then run (dry-run unless
    FINOPS_DRY_RUN=false: then it stays failed and the result says what would happen)."""
    try:
        outcome = context.remediation().retry_action(action_id, user.username)
    except LookupError:
        raise not_found("action", action_id) from None
    except (ValueError, IllegalTransitionError) as exc:
        raise Problem(409, str(exc), kind="invalid-state") from None
    if outcome.result == "stopped":
        raise Problem(409, outcome.detail, kind="emergency-stop-engaged")
    return OutcomeOut.of(outcome)


@router.post("/{action_id}/rollback", response_model=OutcomeOut)
def rollback(action_id: int, context: ContextDep, user: Approver) -> OutcomeOut:
    """Undo from the recorded pre-state (live: rolling back is always a real change)."""
    try:
        outcome = context.action_engine().rollback(action_id, user.username)
    except LookupError:
        raise not_found("action", action_id) from None
    except EmergencyStopEngaged as exc:
        raise Problem(409, str(exc), kind="emergency-stop-engaged") from None
    if outcome.result == "skipped":
        raise Problem(409, outcome.detail, kind="invalid-state")
    if outcome.result == "stopped":  # the stop engaged half-way through the undo
        raise Problem(409, outcome.detail, kind="emergency-stop-engaged", action_id=action_id)
    if outcome.result == "failed":
        raise Problem(502, outcome.detail, kind="rollback-failed", action_id=action_id)
    return OutcomeOut.of(outcome)


def _row(session: Session, action_id: int) -> ActionRow:
    row = session.get(ActionRow, action_id)
    if row is None:
        raise not_found("action", action_id)
    return row
