"""Manual overrides: list (viewer), create (operator), end early (approver).

A policy-scope override holds the policy back (PolicyManager). A resource- or account-scope
override is a safety rule (Rule.EXEMPTED): the checker blocks every action on that resource
or account, at planning and again before execution. A scope is accepted only if something
enforces it (`ENFORCED_SCOPES`), and a target that names nothing is refused: an exemption
that silently does nothing is worse than none.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from enum import StrEnum

from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from backend.api.context import ApiContext
from backend.api.deps import Approver, ContextDep, Operator, SessionDep, Viewer
from backend.api.pagination import Page, Paging, SortParam, paginate_query
from backend.api.problems import Problem, not_found
from backend.api.routers import API_PREFIX
from backend.api.schemas import Text
from backend.config import ACCOUNT_PATTERN
from backend.core.audit_chain import EventType
from backend.core.models import OverrideRow, PolicyRow, ResourceRow
from backend.core.types import utcnow
from backend.domain.policy import PolicyValidationError

router = APIRouter(prefix=f"{API_PREFIX}/overrides", tags=["overrides"])


class Scope(StrEnum):
    RESOURCE = "resource"
    POLICY = "policy"
    ACCOUNT = "account"


# Resource and account scope: the safety checker's EXEMPTED rule (backend/domain/safety.py).
ENFORCED_SCOPES = frozenset({Scope.POLICY, Scope.RESOURCE, Scope.ACCOUNT})
SORTS = {"id": OverrideRow.id, "created_at": OverrideRow.created_at}


class OverrideIn(BaseModel):
    scope: Scope
    target: str = Field(
        min_length=1,
        max_length=512,
        description="A policy name, a resource id as in the inventory (i-..., vol-...), "
        "or a 12-digit account id.",
    )
    reason: Text
    expires_at: AwareDatetime | None = Field(None, description="None: until ended.")


class OverrideOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    scope: str
    target: str
    reason: str
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    active: bool = False

    @classmethod
    def of(cls, row: OverrideRow, now: dt.datetime) -> OverrideOut:
        out = cls.model_validate(row)
        out.active = row.expires_at is None or row.expires_at > now
        return out


@router.get("", response_model=Page[OverrideOut])
def list_overrides(
    session: SessionDep,
    _: Viewer,
    page: Paging,
    scope: Scope | None = None,
    target: str | None = None,
    active: bool | None = True,
    sort: SortParam = None,
) -> Page[OverrideOut]:
    now = utcnow()
    query = select(OverrideRow)
    if scope is not None:
        query = query.where(OverrideRow.scope == scope.value)
    if target is not None:
        query = query.where(OverrideRow.target == target)
    live = or_(OverrideRow.expires_at.is_(None), OverrideRow.expires_at > now)
    if active is not None:
        query = query.where(live if active else ~live)
    window = paginate_query(session, query, page, sort, SORTS, OverrideRow.id)
    return window.page([OverrideOut.of(r, now) for r in window.rows])


@router.post("", response_model=OverrideOut, status_code=201)
def create_override(
    body: OverrideIn, session: SessionDep, context: ContextDep, user: Operator
) -> OverrideOut:
    now = utcnow()
    if body.scope not in ENFORCED_SCOPES:
        raise Problem(
            501,
            f"{body.scope.value}-scope overrides are not enforced, so none is created",
            kind="override-scope-not-enforced",
        )
    if body.expires_at is not None and body.expires_at <= now:
        raise Problem(422, "expires_at is not in the future", kind="invalid-override")
    target = body.target.strip()
    _check_target(session, context, body.scope, target)
    row = OverrideRow(
        scope=body.scope.value,
        target=target,
        reason=body.reason.strip(),
        created_by=user.username,
        created_at=now,
        expires_at=body.expires_at.astimezone(dt.UTC) if body.expires_at else None,
    )
    session.add(row)
    session.flush()
    details = {"scope": row.scope, "target": row.target, "reason": row.reason}
    _audit(context, session, user.username, row.id, "created", {**details, "until": row.expires_at})
    session.commit()
    return OverrideOut.of(row, now)


@router.delete("/{override_id}", response_model=OverrideOut)
def end_override(
    override_id: int, session: SessionDep, context: ContextDep, user: Approver
) -> OverrideOut:
    """End it now; the row stays, with its end time, as the record of the override."""
    now = utcnow()
    row = session.get(OverrideRow, override_id)
    if row is None:
        raise not_found("override", override_id)
    if row.expires_at is not None and row.expires_at <= now:
        raise Problem(409, f"override {override_id} has already ended", kind="invalid-state")
    row.expires_at = now
    _audit(context, session, user.username, row.id, "ended", {"target": row.target})
    session.commit()
    return OverrideOut.of(row, now)


def _check_target(session: Session, context: ApiContext, scope: Scope, target: str) -> None:
    if scope is Scope.POLICY:
        _check_policy(session, context, target)
    elif scope is Scope.ACCOUNT and not (target.isascii() and ACCOUNT_PATTERN.fullmatch(target)):
        raise Problem(
            422,
            f"account {target!r} is not a 12-digit AWS account id",
            kind="invalid-override",
            title="Invalid request",
        )
    elif scope is Scope.RESOURCE:
        known = session.scalar(
            select(ResourceRow.id).where(ResourceRow.resource_id == target).limit(1)
        )
        # The rule matches the exact id: a typo or an ARN would exempt nothing.
        if known is None:
            raise Problem(
                422,
                f"unknown resource {target!r}: no resource with that id in the inventory; "
                "give the id as listed (for example i-0abc..., vol-0abc...), or scan first",
                kind="invalid-override",
                title="Invalid request",
            )


def _check_policy(session: Session, context: ApiContext, name: str) -> None:
    known = set(session.scalars(select(PolicyRow.name)))
    # A refused pack: the names in the database are all that is known.
    with contextlib.suppress(PolicyValidationError):
        known |= set(context.policies().load().by_name)
    if name not in known:
        raise Problem(
            422,
            f"unknown policy {name!r}; known policies: {', '.join(sorted(known)) or 'none'}",
            kind="invalid-override",
            title="Invalid request",
        )


def _audit(
    context: ApiContext,
    session: Session,
    actor: str,
    override_id: int,
    outcome: str,
    details: dict[str, object],
) -> None:
    context.audit().record(
        EventType.CONFIG_CHANGE,
        subject_type="override",
        subject_id=override_id,
        actor=actor,
        outcome=outcome,
        details=dict(details),
        session=session,
    )
