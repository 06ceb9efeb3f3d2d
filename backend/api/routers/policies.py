"""Policies: read and validate (viewer); disable and pause (operator); enable and resume
(approver). What makes the automation do less needs less trust than what makes it do more.

The files say what a policy does; PolicyManager keeps whether it may run, and audits each
change with the caller as actor.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Body, Query
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy.orm import Session

from backend.api.context import ApiContext
from backend.api.deps import Approver, ContextDep, Operator, SessionDep, Viewer
from backend.api.pagination import OffsetPaging, Page, SortParam, list_page, paginate_list
from backend.api.problems import Problem
from backend.api.routers import API_PREFIX
from backend.api.schemas import Text
from backend.core.policy_manager import PolicyManager, PolicyStatus, UnknownPolicyError
from backend.core.types import utcnow
from backend.domain.policy import MAX_FILE_BYTES, PolicyValidationError, load_text, validate_text

router = APIRouter(prefix=f"{API_PREFIX}/policies", tags=["policies"])


class PolicyOut(BaseModel):
    name: str
    kind: str
    action: str
    mode: str
    risk: str
    description: str
    source: str
    schedule: str | None
    runs_now: bool = Field(description="Whether the policy may act now.")
    enabled_in_file: bool
    enabled_in_database: bool
    paused_until: dt.datetime | None
    overrides: list[str]
    blocked_by: list[str]
    synced: bool

    @classmethod
    def of(cls, s: PolicyStatus) -> PolicyOut:
        p = s.policy
        return cls(
            name=p.name,
            kind=p.kind.value,
            action=p.action.name,
            mode=p.mode.value,
            risk=p.risk.value,
            description=p.description,
            source=p.source,
            schedule=f"{p.schedule.cron} {p.schedule.timezone}" if p.schedule else None,
            runs_now=s.enabled,
            enabled_in_file=p.enabled,
            enabled_in_database=s.db_enabled,
            paused_until=s.paused_until,
            overrides=list(s.overrides),
            blocked_by=s.blocked_by,
            synced=s.synced,
        )


class ValidateBody(BaseModel):
    source: str = Field(max_length=MAX_FILE_BYTES, description="A policy file's YAML text.")


class ValidationOut(BaseModel):
    ok: bool
    policies: int
    problems: list[str]
    report: list[str]


class ReasonBody(BaseModel):
    reason: str | None = Field(None, max_length=2000, description="Why: kept in the audit log.")


OptionalReason = Annotated[ReasonBody | None, Body()]


def _reason(body: ReasonBody | None) -> str | None:
    return body.reason if body is not None else None


class PauseBody(BaseModel):
    until: AwareDatetime = Field(description="When it may run again (with a time zone).")
    reason: Text


class ChangeOut(BaseModel):
    changed: bool
    policy: PolicyOut


@router.get("", response_model=Page[PolicyOut])
def list_policies(
    session: SessionDep,
    context: ContextDep,
    _: Viewer,
    page: OffsetPaging,
    kind: str | None = None,
    mode: str | None = None,
    runs_now: Annotated[bool | None, Query()] = None,
    sort: SortParam = None,
) -> Page[PolicyOut]:
    found = [PolicyOut.of(s) for s in _statuses(context.policies(), session)]
    found = [
        p
        for p in found
        if (kind is None or p.kind == kind)
        and (mode is None or p.mode == mode)
        and (runs_now is None or p.runs_now == runs_now)
    ]
    keys: dict[str, Callable[[PolicyOut], object]] = {
        "name": lambda p: p.name,
        "kind": lambda p: p.kind,
        "mode": lambda p: p.mode,
    }
    items, total = paginate_list(found, page, sort, keys, default="name")
    return list_page(items, total, page)


@router.get("/{name}", response_model=PolicyOut)
def get_policy(name: str, session: SessionDep, context: ContextDep, _: Viewer) -> PolicyOut:
    return _one(context.policies(), session, name)


@router.post("/validate", response_model=ValidationOut)
def validate(
    context: ContextDep, _: Viewer, body: Annotated[ValidateBody | None, Body()] = None
) -> ValidationOut:
    """Without a body: the configured pack, compared with the database. With `source`:
    that YAML text, before anyone deploys it. Nothing is changed either way."""
    if body is not None:
        problems = validate_text(body.source, "<request>")
        count = 0 if problems else len(load_text(body.source, "<request>"))
        texts = [str(p) for p in problems]
        summary = f"{len(problems)} problem(s): refused" if problems else f"{count} policies OK"
        return ValidationOut(
            ok=not problems, policies=count, problems=texts, report=[*texts, summary]
        )
    report = context.policies().check()
    return ValidationOut(
        ok=report.ok,
        policies=report.policies,
        problems=[str(p) for p in report.problems],
        report=list(report.lines),
    )


@router.post("/{name}/enable", response_model=ChangeOut)
def enable(
    name: str, session: SessionDep, context: ContextDep, user: Approver, body: OptionalReason = None
) -> ChangeOut:
    return _change(
        context,
        session,
        name,
        lambda m: m.set_enabled(name, True, user.username, _reason(body), session=session),
    )


@router.post("/{name}/disable", response_model=ChangeOut)
def disable(
    name: str, session: SessionDep, context: ContextDep, user: Operator, body: OptionalReason = None
) -> ChangeOut:
    return _change(
        context,
        session,
        name,
        lambda m: m.set_enabled(name, False, user.username, _reason(body), session=session),
    )


@router.post("/{name}/pause", response_model=ChangeOut)
def pause(
    name: str, session: SessionDep, context: ContextDep, user: Operator, body: PauseBody
) -> ChangeOut:
    return _change(
        context,
        session,
        name,
        lambda m: m.pause(
            name, body.until.astimezone(dt.UTC), user.username, body.reason, session=session
        ),
    )


@router.post("/{name}/resume", response_model=ChangeOut)
def resume(
    name: str, session: SessionDep, context: ContextDep, user: Approver, body: OptionalReason = None
) -> ChangeOut:
    return _change(
        context,
        session,
        name,
        lambda m: m.resume(name, user.username, _reason(body), session=session),
    )


def _change(
    context: ApiContext, session: Session, name: str, act: Callable[[PolicyManager], bool]
) -> ChangeOut:
    manager = context.policies()
    try:
        changed = act(manager)
    except UnknownPolicyError as exc:
        raise Problem(404, str(exc), kind="not-found") from None
    except ValueError as exc:  # a missing reason, a pause end in the past
        raise Problem(422, str(exc), kind="invalid-change", title="Invalid request") from None
    session.commit()
    return ChangeOut(changed=changed, policy=_one(manager, session, name))


def _statuses(manager: PolicyManager, session: Session) -> list[PolicyStatus]:
    try:
        return manager.statuses(session, utcnow())
    except PolicyValidationError as exc:
        raise Problem(
            503,
            f"the configured policy pack is refused ({len(exc.problems)} problem(s)): "
            "nothing from it runs; fix the files (POST /policies/validate lists the problems)",
            kind="policy-pack-refused",
            problems=[str(p) for p in exc.problems],
        ) from None


def _one(manager: PolicyManager, session: Session, name: str) -> PolicyOut:
    statuses = _statuses(manager, session)
    for status in statuses:
        if status.policy.name == name:
            return PolicyOut.of(status)
    raise Problem(
        404, str(UnknownPolicyError(name, [s.policy.name for s in statuses])), kind="not-found"
    )
