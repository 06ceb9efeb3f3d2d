"""The savings report (viewer): estimated and realized monthly savings, by policy, account
or month.

Estimated: open opportunities' `estimated_monthly_savings` (month: when first found), less
those already saved: an opportunity stays open until its policy is evaluated again, but once
an action on it succeeded its saving is realized (counted below), and once its resource is
gone there is nothing left to save. An opportunity that could not be priced is counted in
`savings_unknown`, never as $0.
Realized: succeeded actions (month: when they finished). Nothing measures the bill after an
action yet (the engine leaves `realized_monthly_savings` empty: "measured later, never
assumed"), so realized comes in two figures that are never mixed: `realized_measured`, from
that column, and `realized_from_estimates`, the estimate of each succeeded action that has
no measurement. A rolled-back action counts in neither.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import case, exists, func, select
from sqlalchemy.orm import Session

from backend.api.deps import SessionDep, Viewer
from backend.api.keyset import Column
from backend.api.routers import API_PREFIX
from backend.core.models import ActionRow, OpportunityRow, ResourceRow

router = APIRouter(prefix=f"{API_PREFIX}/reports", tags=["reports"])
GroupBy = Literal["policy", "account", "month"]
BASIS = {
    "estimated": (
        "open opportunities' estimated monthly savings, without those whose action succeeded "
        "or whose resource is gone; month = first found"
    ),
    "savings_unknown": "of those open opportunities, how many could not be priced",
    "realized_measured": "succeeded actions' measured monthly savings; month = finished",
    "realized_from_estimates": "succeeded actions without a measurement: their estimate",
}


class SavingsRow(BaseModel):
    key: str
    estimated_monthly_savings: float = 0.0
    opportunities: int = 0
    savings_unknown: int = Field(
        0,
        description="Opportunities counted in `opportunities` whose savings could not be "
        "priced: left out of estimated_monthly_savings, which is a lower bound when this is "
        "not 0.",
    )
    realized_measured: float = 0.0
    realized_from_estimates: float = 0.0
    succeeded_actions: int = 0


class SavingsReport(BaseModel):
    group_by: GroupBy
    currency: str = "USD"
    basis: dict[str, str]
    rows: list[SavingsRow]
    totals: SavingsRow


@router.get("/savings", response_model=SavingsReport)
def savings(
    session: SessionDep,
    _: Viewer,
    group_by: GroupBy = "policy",
    account: str | None = None,
    policy: str | None = None,
) -> SavingsReport:
    rows: dict[str, dict[str, Any]] = defaultdict(dict)
    est_key = _key(
        session,
        group_by,
        OpportunityRow.policy_name,
        ResourceRow.account_id,
        OpportunityRow.first_found,
    )
    unpriced = OpportunityRow.estimated_monthly_savings.is_(None)
    saved_already = exists().where(
        ActionRow.opportunity_id == OpportunityRow.id, ActionRow.state == "succeeded"
    )
    estimated = (
        select(
            est_key,
            func.coalesce(func.sum(OpportunityRow.estimated_monthly_savings), 0.0),
            func.count(),
            func.coalesce(func.sum(case((unpriced, 1), else_=0)), 0),
        )
        .join(ResourceRow, ResourceRow.id == OpportunityRow.resource_pk)
        .where(OpportunityRow.status == "open", ResourceRow.gone_at.is_(None), ~saved_already)
        .group_by(est_key)
    )
    if account:
        estimated = estimated.where(ResourceRow.account_id == account)
    if policy:
        estimated = estimated.where(OpportunityRow.policy_name == policy)
    for key, saved, count, unknown in session.execute(estimated):
        rows[str(key)].update(
            estimated_monthly_savings=float(saved or 0),
            opportunities=int(count),
            savings_unknown=int(unknown),
        )
    act_key = _key(
        session,
        group_by,
        ActionRow.policy_name,
        ActionRow.account_id,
        func.coalesce(ActionRow.finished_at, ActionRow.updated_at),
    )
    unmeasured = ActionRow.realized_monthly_savings.is_(None)
    realized = (
        select(
            act_key,
            func.coalesce(func.sum(ActionRow.realized_monthly_savings), 0.0),
            func.coalesce(func.sum(case((unmeasured, ActionRow.estimated_monthly_savings))), 0.0),
            func.count(),
        )
        .where(ActionRow.state == "succeeded")
        .group_by(act_key)
    )
    if account:
        realized = realized.where(ActionRow.account_id == account)
    if policy:
        realized = realized.where(ActionRow.policy_name == policy)
    for key, measured, from_estimates, count in session.execute(realized):
        rows[str(key)].update(
            realized_measured=float(measured or 0),
            realized_from_estimates=float(from_estimates or 0),
            succeeded_actions=int(count),
        )
    out = [SavingsRow(key=k, **_rounded(v)) for k, v in sorted(rows.items())]
    fields = [f for f in SavingsRow.model_fields if f != "key"]
    totals = SavingsRow(
        key="total", **_rounded({f: sum(getattr(r, f) for r in out) for f in fields})
    )
    return SavingsReport(group_by=group_by, basis=BASIS, rows=out, totals=totals)


def _key(
    session: Session,
    group_by: GroupBy,
    policy: Column,
    account: Column,
    moment: Column,
) -> Column:
    if group_by == "policy":
        return policy
    if group_by == "account":
        return account
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", moment), "YYYY-MM")
    return func.strftime("%Y-%m", moment)  # SQLite keeps UTC datetimes as ISO text


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in values.items()}
