"""Request dependencies as `Annotated` aliases: the context, a session, the caller and role.

`Viewer`, `Operator`, `Approver` and `Administrator` are the caller, after checking that
their role is at least that one. A refused state-changing call is audited with its actor.

Dependencies that do no I/O are `async`: FastAPI runs each plain `def` dependency in its
thread pool, and those hops were a tenth of a list page's CPU. The ones that wait on the
database stay plain functions, off the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from backend.api.accounts import AuthenticationError, Principal, check_token, mark_used
from backend.api.context import ApiContext
from backend.api.problems import Problem
from backend.api.security import Role
from backend.core.audit_chain import EventType
from backend.core.database import session_scope
from backend.core.types import utcnow

log = structlog.get_logger(__name__)
_bearer = HTTPBearer(auto_error=False, description="An API token: `finops users token NAME`")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="finops"'}
_READS = ("GET", "HEAD", "OPTIONS")


async def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


ContextDep = Annotated[ApiContext, Depends(get_context)]


async def get_session(context: ContextDep) -> AsyncIterator[Session]:
    """One session per request. Routes that change state commit it themselves, before they
    answer; anything not committed is rolled back when the session closes."""
    session = context.session_factory()  # no I/O yet: it connects on first use
    try:
        yield session
    finally:
        await run_in_threadpool(session.close)  # the rollback waits on the database


SessionDep = Annotated[Session, Depends(get_session)]


def current_user(
    context: ContextDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Problem(
            401,
            "an API token is required: send 'Authorization: Bearer <token>'",
            kind="unauthenticated",
            headers=_CHALLENGE,
        )
    now = utcnow()
    try:
        # In the request's own session (one connection, one transaction for the request):
        # revocation and expiry are read on every call.
        principal, due = check_token(session, credentials.credentials, now)
    except AuthenticationError as exc:
        raise Problem(401, str(exc), kind="unauthenticated", headers=_CHALLENGE) from None
    if due:  # once a minute a token: its own short transaction, which a read also commits
        with session_scope(factory=context.session_factory) as marking:
            mark_used(marking, principal.token_id, now)
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


def require(needed: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    async def check(request: Request, user: CurrentUser, context: ContextDep) -> Principal:
        if user.role.allows(needed):
            return user
        if request.method not in _READS:
            await run_in_threadpool(_audit_refusal, context, request, user, needed)
        raise Problem(
            403,
            f"this needs the {needed.value} role or higher; {user.username} is {user.role.value}",
            kind="forbidden",
            required_role=needed.value,
        )

    return check


def _audit_refusal(context: ApiContext, request: Request, user: Principal, needed: Role) -> None:
    route = getattr(request.scope.get("route"), "path", request.url.path)
    try:
        context.audit().log(
            EventType.API_CALL,
            subject_type="endpoint",
            subject_id=f"{request.method} {route}",
            actor=user.username,
            outcome="refused",
            details={"needs": needed.value, "has": user.role.value},
        )
    except Exception as exc:  # noqa: BLE001 - the refusal stands whether or not it is recorded
        log.error("refused call not audited", error=str(exc))


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Approver = Annotated[Principal, Depends(require(Role.APPROVER))]
Administrator = Annotated[Principal, Depends(require(Role.ADMINISTRATOR))]
