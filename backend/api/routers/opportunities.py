"""Opportunities (viewer): what the policies found, with estimated monthly savings."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import Select, func, select

from backend.api.deps import SessionDep, Viewer
from backend.api.pagination import Page, Paging, SortParam, paginate_query
from backend.api.routers import API_PREFIX
from backend.core.models import OpportunityRow, ResourceRow
from backend.domain.resources import ResourceKind

router = APIRouter(prefix=f"{API_PREFIX}/opportunities", tags=["opportunities"])
SORTS = {
    "id": OpportunityRow.id,
    "estimated_monthly_savings": OpportunityRow.estimated_monthly_savings,
    "first_found": OpportunityRow.first_found,
    "last_seen": OpportunityRow.last_seen,
    "policy": OpportunityRow.policy_name,
}


class OpportunityOut(BaseModel):
    id: int
    policy_name: str
    action: str
    params: dict[str, Any]
    evidence: dict[str, Any]
    estimated_monthly_savings: float | None
    savings_unknown: str | None
    status: str
    first_found: dt.datetime
    last_seen: dt.datetime
    resolved_at: dt.datetime | None
    resource_pk: int
    kind: str
    account_id: str
    region: str
    resource_id: str


class OpportunityPage(Page[OpportunityOut]):
    total_estimated_monthly_savings: float
    savings_unknown: int  # how many matching ones could not be priced (not counted as zero)


@router.get("", response_model=OpportunityPage)
def list_opportunities(
    session: SessionDep,
    _: Viewer,
    page: Paging,
    status: Literal["open", "resolved"] | None = "open",
    policy: Annotated[list[str] | None, Query()] = None,
    kind: ResourceKind | None = None,
    account: str | None = None,
    region: str | None = None,
    min_savings: Annotated[float | None, Query(ge=0)] = None,
    sort: SortParam = None,
) -> OpportunityPage:
    query: Select[OpportunityRow, ResourceRow] = select(OpportunityRow, ResourceRow).join(
        ResourceRow, ResourceRow.id == OpportunityRow.resource_pk
    )
    if status:
        query = query.where(OpportunityRow.status == status)
    if policy:
        query = query.where(OpportunityRow.policy_name.in_(policy))
    if kind:
        query = query.where(ResourceRow.kind == kind.value)
    if account:
        query = query.where(ResourceRow.account_id == account)
    if region:
        query = query.where(ResourceRow.region == region)
    if min_savings is not None:
        query = query.where(OpportunityRow.estimated_monthly_savings >= min_savings)
    rows, total = paginate_query(session, query, page, sort, SORTS, OpportunityRow.id)
    sums = query.with_only_columns(
        func.coalesce(func.sum(OpportunityRow.estimated_monthly_savings), 0.0),
        func.count(OpportunityRow.savings_unknown),
    ).order_by(None)
    saved, unknown = session.execute(sums).one()
    return OpportunityPage(
        items=[_out(o, r) for o, r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
        total_estimated_monthly_savings=round(float(saved or 0.0), 2),
        savings_unknown=int(unknown or 0),
    )


def _out(o: OpportunityRow, r: ResourceRow) -> OpportunityOut:
    return OpportunityOut(
        id=o.id,
        policy_name=o.policy_name,
        action=o.action,
        params=o.params,
        evidence=o.evidence,
        estimated_monthly_savings=o.estimated_monthly_savings,
        savings_unknown=o.savings_unknown,
        status=o.status,
        first_found=o.first_found,
        last_seen=o.last_seen,
        resolved_at=o.resolved_at,
        resource_pk=r.id,
        kind=r.kind,
        account_id=r.account_id,
        region=r.region,
        resource_id=r.resource_id,
    )
