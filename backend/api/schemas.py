"""Response models shared by more than one router: actions and what happened to them."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field

from backend.core.action_engine import ActionOutcome
from backend.core.models import ActionRow
from backend.core.types import utcnow

# A reason, comment or name that goes into the audit log: blank is refused, not stored.
Text = Annotated[str, Field(min_length=1, max_length=2000, pattern=r"\S")]


class ActionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    state: str
    policy_name: str
    action: str
    kind: str
    account_id: str
    region: str
    resource_id: str
    params: dict[str, Any]
    mode: str
    risk: str
    requested_by: str
    approved_by: str | None
    approved_at: dt.datetime | None
    approval_expires_at: dt.datetime | None
    approval_expired: bool = Field(
        False, description="Approved, but the approval's time ran out: it will not run."
    )
    not_before: dt.datetime | None
    safety_verdict: dict[str, Any]
    error: str | None
    attempts: int
    estimated_monthly_savings: float | None
    realized_monthly_savings: float | None
    run_id: int | None
    opportunity_id: int | None
    rollback_of: int | None
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None

    @classmethod
    def of(cls, row: ActionRow, now: dt.datetime | None = None) -> Self:
        out = cls.model_validate(row)
        expires = row.approval_expires_at
        out.approval_expired = bool(
            row.state == "approved" and expires is not None and expires <= (now or utcnow())
        )
        return out


class ActionDetail(ActionOut):
    pre_state: dict[str, Any] | None
    post_state: dict[str, Any] | None
    backup_ref: str | None
    claimed_by: str | None
    claimed_at: dt.datetime | None
    deadline: dt.datetime | None


class OutcomeOut(BaseModel):
    action_id: int
    result: str
    detail: str

    @classmethod
    def of(cls, outcome: ActionOutcome) -> OutcomeOut:
        return cls(action_id=outcome.action_id, result=outcome.result, detail=outcome.detail)
