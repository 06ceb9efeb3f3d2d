"""The stored inventory (viewer): what the last scans saw, with its monthly cost."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from backend.api.deps import SessionDep, Viewer
from backend.api.pagination import Page, Paging, SortParam, json_answer, paginate_query
from backend.api.problems import Problem, not_found
from backend.api.routers import API_PREFIX
from backend.core.models import ResourceRow
from backend.domain.resources import ResourceKind

router = APIRouter(prefix=f"{API_PREFIX}/inventory", tags=["inventory"])
SORTS = {
    "id": ResourceRow.id,
    "monthly_cost": ResourceRow.monthly_cost,
    "resource_id": ResourceRow.resource_id,
    "kind": ResourceRow.kind,
    "last_seen": ResourceRow.last_seen,
}
# What a resource is; not the columns the database derives from it for the evaluator.
ROW_COLUMNS = [c for c in ResourceRow.__table__.columns if c.computed is None]
TagFilter = Annotated[
    list[str] | None,
    Query(description="key=value, or key alone for 'has this tag'; repeat to require several."),
]


class ResourceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    account_id: str
    region: str
    resource_id: str
    state: str
    tags: dict[str, Any]
    attributes: dict[str, Any]
    monthly_cost: float | None
    cost_unknown: str | None
    created_at: dt.datetime | None
    first_seen: dt.datetime
    last_seen: dt.datetime
    gone_at: dt.datetime | None


@router.get("", response_model=Page[ResourceOut])
def list_resources(
    session: SessionDep,
    _: Viewer,
    page: Paging,
    kind: Annotated[list[ResourceKind] | None, Query()] = None,
    account: Annotated[list[str] | None, Query()] = None,
    region: Annotated[list[str] | None, Query()] = None,
    state: str | None = None,
    tag: TagFilter = None,
    min_monthly_cost: Annotated[float | None, Query(ge=0)] = None,
    include_gone: bool = False,
    sort: SortParam = None,
) -> Response:
    # Plain rows, not ORM objects: building those was a fifth of a page's CPU.
    query = select(*ROW_COLUMNS)
    if not include_gone:
        query = query.where(ResourceRow.gone_at.is_(None))
    if kind:
        query = query.where(ResourceRow.kind.in_([k.value for k in kind]))
    if account:
        query = query.where(ResourceRow.account_id.in_(account))
    if region:
        query = query.where(ResourceRow.region.in_(region))
    if state:
        query = query.where(ResourceRow.state == state)
    if min_monthly_cost is not None:
        query = query.where(ResourceRow.monthly_cost >= min_monthly_cost)
    for item in tag or []:
        key, sep, value = item.partition("=")
        if not key:
            raise Problem(
                422, f"tag filter {item!r}: expected key=value or key", kind="invalid-filter"
            )
        # JSON lookups render as json_extract on SQLite and ->> on PostgreSQL.
        found = ResourceRow.tags[key].as_string()
        query = query.where(found == value if sep else found.is_not(None))
    window = paginate_query(session, query, page, sort, SORTS, ResourceRow.id)
    return json_answer(window.page([ResourceOut.model_validate(r) for r in window.rows]))


@router.get("/{resource_pk}", response_model=ResourceOut)
def get_resource(resource_pk: int, session: SessionDep, _: Viewer) -> ResourceOut:
    row = session.get(ResourceRow, resource_pk)
    if row is None:
        raise not_found("resource", resource_pk)
    return ResourceOut.model_validate(row)
