"""What the dashboard needs beyond the other routers (viewer to read, approver to approve):
the stored inventory's monthly cost by kind, account and region; each policy's limits,
notice and rollback window; and approval with a comment, kept in the audit log in the same
transaction as the approval itself."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session

from backend.api.deps import Approver, ContextDep, SessionDep, Viewer
from backend.api.keyset import Column
from backend.api.problems import Problem, not_found
from backend.api.routers import API_PREFIX
from backend.api.schemas import ActionDetail
from backend.core.action_planner import ApprovalError, RunWindowPassedError
from backend.core.audit_chain import EventType
from backend.core.models import ActionRow, ResourceRow
from backend.domain.lifecycle import ActionState
from backend.domain.policy import PolicyValidationError

router = APIRouter(prefix=f"{API_PREFIX}/dashboard", tags=["dashboard"])


class CostRow(BaseModel):
    key: str
    monthly_cost: float = Field(description="Sum of the priced resources' monthly cost.")
    resources: int
    unpriced: int = Field(description="Resources that could not be priced (not counted as 0).")


class CostSummary(BaseModel):
    currency: str = "USD"
    total: CostRow
    by_kind: list[CostRow]
    by_account: list[CostRow]
    by_region: list[CostRow]


class PolicyDetail(BaseModel):
    name: str
    action: str
    action_description: str
    options: dict[str, Any]
    destructive: bool
    reversible: bool
    max_actions_per_run: int | None
    max_percent_of_fleet: float | None
    notify_owner: bool
    grace_days: int
    rollback_window_days: float | None


class ApproveBody(BaseModel):
    comment: str | None = Field(None, max_length=2000, description="Kept in the audit log.")


@router.get("/costs", response_model=CostSummary)
def costs(session: SessionDep, _: Viewer) -> CostSummary:
    """The monthly cost of what the last scans saw (resources not gone)."""
    return CostSummary(
        total=_costs(session, None)[0],
        by_kind=_costs(session, ResourceRow.kind),
        by_account=_costs(session, ResourceRow.account_id),
        by_region=_costs(session, ResourceRow.region),
    )


def _costs(session: Session, column: Column | None) -> list[CostRow]:
    """One row per value of `column` (most expensive first), or the one total row."""
    values = (
        func.sum(ResourceRow.monthly_cost),
        func.count(),
        func.count().filter(ResourceRow.monthly_cost.is_(None)),
    )
    key = column if column is not None else literal("total")
    query = select(key, *values).where(ResourceRow.gone_at.is_(None))
    if column is not None:
        query = query.group_by(column)
    rows = [
        CostRow(key=str(k), monthly_cost=round(float(cost or 0), 2), resources=n, unpriced=u)
        for k, cost, n, u in session.execute(query)
    ]
    return sorted(rows, key=lambda r: (-r.monthly_cost, r.key))


@router.get("/policies", response_model=list[PolicyDetail])
def policy_details(context: ContextDep, _: Viewer) -> list[PolicyDetail]:
    """What each file policy does and the limits it sets (its state: GET /policies)."""
    try:
        pack = context.policies().load()
    except PolicyValidationError as exc:
        raise Problem(
            503,
            f"the configured policy pack is refused ({len(exc.problems)} problem(s))",
            kind="policy-pack-refused",
            problems=[str(p) for p in exc.problems],
        ) from None
    out = []
    for p in pack:
        action = p.action.type
        rule = action.rule(p.kind)
        out.append(
            PolicyDetail(
                name=p.name,
                action=p.action.name,
                action_description=action.description,
                options=p.action.params.options(),
                destructive=bool(rule and rule.destructive),
                reversible=action.reversible(p.kind),
                max_actions_per_run=p.limits.max_actions_per_run,
                max_percent_of_fleet=p.limits.max_percent_of_fleet,
                notify_owner=p.notice.notify,
                grace_days=p.notice.grace_days,
                rollback_window_days=p.rollback.window_days,
            )
        )
    return out


@router.post("/actions/{action_id}/approve", response_model=ActionDetail)
def approve_with_comment(
    action_id: int, body: ApproveBody, session: SessionDep, context: ContextDep, user: Approver
) -> ActionDetail:
    """POST /actions/{id}/approve, plus the approver's comment as an audit event of the same
    transaction: both are kept or neither is. Not your own request."""
    audit = context.audit()
    planner = context.planner()
    planner.expire_approvals(session)
    row = session.get(ActionRow, action_id)
    if row is None:
        raise not_found("action", action_id)
    try:
        planner.approve(session, action_id, user.username)
    except ApprovalError as exc:
        waiting = row.state == ActionState.AWAITING_APPROVAL
        if waiting and not isinstance(exc, RunWindowPassedError):
            raise Problem(403, str(exc), kind="separation-of-duties") from None
        raise Problem(409, str(exc), kind="invalid-state") from None
    comment = (body.comment or "").strip()
    if comment:
        audit.record(
            EventType.APPROVAL,
            subject_type="action",
            subject_id=action_id,
            actor=user.username,
            outcome="commented",
            details={"comment": comment},
            session=session,
        )
    session.commit()
    return ActionDetail.of(row)
