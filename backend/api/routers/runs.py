"""Action runs (viewer), and rolling a whole run back (approver)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from backend.api.deps import Approver, ContextDep, SessionDep, Viewer
from backend.api.pagination import Page, Paging, SortParam, paginate_query
from backend.api.problems import Problem, not_found
from backend.api.routers import API_PREFIX
from backend.api.schemas import ActionOut, OutcomeOut
from backend.core.emergency_stop import EmergencyStopEngaged
from backend.core.models import ActionRow, ActionRunRow
from backend.core.types import utcnow

router = APIRouter(prefix=f"{API_PREFIX}/runs", tags=["runs"])
SORTS = {"id": ActionRunRow.id, "started_at": ActionRunRow.started_at}


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    started_at: dt.datetime
    finished_at: dt.datetime | None
    status: str
    triggered_by: str
    dry_run: bool
    summary: dict[str, Any]


class RunDetail(RunOut):
    actions: list[ActionOut]


class RollbackOut(BaseModel):
    run_id: int
    outcomes: list[OutcomeOut]
    rolled_back: int
    failed: int


@router.get("", response_model=Page[RunOut])
def list_runs(
    session: SessionDep,
    _: Viewer,
    page: Paging,
    status: str | None = None,
    triggered_by: str | None = None,
    dry_run: bool | None = None,
    sort: SortParam = None,
) -> Page[RunOut]:
    query = select(ActionRunRow)
    if status:
        query = query.where(ActionRunRow.status == status)
    if triggered_by:
        query = query.where(ActionRunRow.triggered_by == triggered_by)
    if dry_run is not None:
        query = query.where(ActionRunRow.dry_run == dry_run)
    window = paginate_query(session, query, page, sort, SORTS, ActionRunRow.id)
    return window.page([RunOut.model_validate(r) for r in window.rows])


@router.get("/{run_id}", response_model=RunDetail)
def get_run(run_id: int, session: SessionDep, _: Viewer) -> RunDetail:
    run = session.get(ActionRunRow, run_id)
    if run is None:
        raise not_found("run", run_id)
    now = utcnow()
    actions = session.scalars(
        select(ActionRow).where(ActionRow.run_id == run_id).order_by(ActionRow.id)
    )
    return RunDetail(
        **RunOut.model_validate(run).model_dump(), actions=[ActionOut.of(a, now) for a in actions]
    )


@router.post("/{run_id}/rollback", response_model=RollbackOut)
def rollback_run(
    run_id: int, session: SessionDep, context: ContextDep, user: Approver
) -> RollbackOut:
    """Undo every succeeded action of the run, newest first; each outcome is listed."""
    if session.get(ActionRunRow, run_id) is None:
        raise not_found("run", run_id)
    session.close()  # the engine opens its own transactions; hold no snapshot meanwhile
    try:
        outcomes = context.action_engine().rollback_run(run_id, user.username)
    except EmergencyStopEngaged as exc:
        raise Problem(409, str(exc), kind="emergency-stop-engaged") from None
    return RollbackOut(
        run_id=run_id,
        outcomes=[OutcomeOut.of(o) for o in outcomes],
        rolled_back=sum(1 for o in outcomes if o.result == "rolled_back"),
        failed=sum(1 for o in outcomes if o.result == "failed"),
    )
