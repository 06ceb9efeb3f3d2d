"""The emergency stop: read it (viewer), engage it (operator), release it (administrator).

Engaging goes through AutoRemediationEngine.emergency_stop, the runbook's P0 call, so the
API and the runbook do the same thing: persist the stop, audit it with the actor, halt the
dispatcher, alert. Releasing is refused by EmergencyStop itself for non-administrators,
which also audits the refusal.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import structlog
from fastapi import APIRouter
from pydantic import BaseModel, Field

from backend.api.deps import ContextDep, CurrentUser, StopEngager, Viewer
from backend.api.problems import Problem
from backend.api.routers import API_PREFIX
from backend.api.schemas import Text
from backend.api.security import Role
from backend.core.automation_audit_logger import AuditLogError
from backend.core.database import DatabaseUnavailableError
from backend.core.emergency_stop import EngineState, not_persisted

log = structlog.get_logger(__name__)
router = APIRouter(prefix=f"{API_PREFIX}/emergency-stop", tags=["emergency stop"])


class EngageBody(BaseModel):
    reason: Text = Field(description="Shown to every worker, and audited.")


class StopState(BaseModel):
    engaged: bool
    reason: str | None
    engaged_by: str | None
    engaged_at: dt.datetime | None
    released_by: str | None
    released_at: dt.datetime | None
    description: str

    @classmethod
    def of(cls, state: EngineState) -> StopState:
        return cls(
            engaged=state.engaged,
            reason=state.reason,
            engaged_by=state.engaged_by,
            engaged_at=state.engaged_at,
            released_by=state.released_by,
            released_at=state.released_at,
            description=state.describe(),
        )


class EngageOut(StopState):
    already_engaged: bool
    held_actions: list[dict[str, Any]]
    notes: list[str]


@router.get("", response_model=StopState)
def get_state(context: ContextDep, _: Viewer) -> StopState:
    return StopState.of(context.emergency_stop().state())


@router.post(
    "",
    response_model=EngageOut,
    responses={
        503: {
            "description": "The database did not take the stop. The problem says whether "
            "its Redis key was set (workers then refuse new claims and AWS calls) and what "
            "to do. While the database is down, a token this API process checked in the "
            "last 15 minutes is accepted here, and only here."
        }
    },
)
def engage(body: EngageBody, context: ContextDep, user: StopEngager) -> EngageOut:
    """Stop all automation now: no claim and no AWS call until an administrator releases it."""
    engine = context.remediation()
    try:
        result = engine.emergency_stop(body.reason.strip(), user.username)
    except DatabaseUnavailableError as exc:
        log.error("emergency stop not persisted", error=str(exc), actor=user.username)
        halted = engine.dispatcher.halt()  # through Redis: heard with the database down
        key_set = engine.emergency.stop_key_set()
        raise Problem(
            503,
            # the cause goes to the log, not to the caller (it names hosts and users)
            not_persisted(key_set, "the database is unavailable", "POST /emergency-stop again"),
            kind="emergency-stop-not-persisted",
            headers={"Retry-After": "10"},
            stop_key_set=key_set,
            dispatcher=halted,
        ) from None
    base = StopState.of(result.state)
    return EngageOut(
        **base.model_dump(),
        already_engaged=result.already_engaged,
        held_actions=result.held,
        notes=result.notes,
    )


@router.post(
    "/release",
    response_model=StopState,
    responses={
        503: {
            "description": "Not released (the audit log refused the event), or released in "
            "the database while the stop key in Redis could not be cleared: nothing executes "
            "until it is; call again once Redis answers"
        }
    },
)
def release(context: ContextDep, user: CurrentUser) -> StopState:
    # Any signed-in caller reaches EmergencyStop.release: it refuses non-administrators and
    # records the refusal in the audit log, as it does for the CLI.
    try:
        # Through the engine: it also tells the workers to consume actions again at once.
        state = (
            context.remediation()
            .resume(user.username, is_admin=user.role is Role.ADMINISTRATOR)
            .state
        )
    except PermissionError as exc:
        raise Problem(
            403, str(exc), kind="forbidden", required_role=Role.ADMINISTRATOR.value
        ) from None
    except AuditLogError as exc:
        raise Problem(
            503, f"not released: the audit log refused the event ({exc})", kind="audit-unavailable"
        ) from None
    if state.fast_path_error:  # released in the database, but the Redis key still stops
        raise Problem(503, state.describe(), kind="stop-key-not-cleared")
    return StopState.of(state)
