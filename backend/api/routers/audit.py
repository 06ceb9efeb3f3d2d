"""The audit log (viewer): query it, verify its hash chain, export a window as JSON Lines."""

from __future__ import annotations

import datetime as dt
import io
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict
from sqlalchemy import select

from backend.api.deps import ContextDep, SessionDep, Viewer
from backend.api.pagination import Page, Paging, SortParam, paginate_query
from backend.api.problems import Problem
from backend.api.routers import API_PREFIX
from backend.core.audit_chain import EventType
from backend.core.models import AuditEventRow

router = APIRouter(prefix=f"{API_PREFIX}/audit", tags=["audit"])
SORTS = {"id": AuditEventRow.id}


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    occurred_at: dt.datetime
    actor: str
    event_type: str
    subject_type: str
    subject_id: str
    outcome: str
    details: dict[str, Any]
    hash: str


class VerifyOut(BaseModel):
    ok: bool
    checked: int
    first_broken_id: int | None
    reason: str | None
    head_id: int | None
    summary: str


@router.get("/events", response_model=Page[EventOut])
def list_events(
    session: SessionDep,
    _: Viewer,
    page: Paging,
    event_type: Annotated[list[EventType] | None, Query()] = None,
    actor: str | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    outcome: str | None = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    sort: SortParam = None,
) -> Page[EventOut]:
    query = select(AuditEventRow)
    if event_type:
        query = query.where(AuditEventRow.event_type.in_([e.value for e in event_type]))
    for column, value in (
        (AuditEventRow.actor, actor),
        (AuditEventRow.subject_type, subject_type),
        (AuditEventRow.subject_id, subject_id),
        (AuditEventRow.outcome, outcome),
    ):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(AuditEventRow.occurred_at >= since)
    if until is not None:
        query = query.where(AuditEventRow.occurred_at < until)
    window = paginate_query(session, query, page, sort, SORTS, AuditEventRow.id, "-id")
    return window.page([EventOut.model_validate(r) for r in window.rows])


@router.get("/verify", response_model=VerifyOut)
def verify(
    context: ContextDep,
    _: Viewer,
    last: Annotated[int | None, Query(ge=1, description="Only the newest N events.")] = None,
) -> VerifyOut:
    report = context.audit().verify(last=last)
    return VerifyOut(
        ok=report.ok,
        checked=report.checked,
        first_broken_id=report.first_broken_id,
        reason=report.reason,
        head_id=report.head_id,
        summary=str(report),
    )


class JsonLinesResponse(PlainTextResponse):
    media_type = "application/x-ndjson"  # what the document declares, and what is sent


@router.get("/export", response_class=JsonLinesResponse)
def export(
    context: ContextDep, _: Viewer, since: AwareDatetime, until: AwareDatetime | None = None
) -> JsonLinesResponse:
    """The window as JSON Lines, hashes included, so that the export can be checked again."""
    if until is not None and until <= since:
        raise Problem(422, "until is not after since", kind="invalid-filter")
    buffer = io.StringIO()
    context.audit().export_jsonl(since, until, stream=buffer)
    return JsonLinesResponse(buffer.getvalue())
