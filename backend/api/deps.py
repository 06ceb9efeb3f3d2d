"""Request dependencies as `Annotated` aliases: the context, a session, the caller and role.

`Viewer`, `Operator`, `Approver` and `Administrator` are the caller, after checking that
their role is at least that one. A refused state-changing call is audited with its actor.

Dependencies that do no I/O are `async`: FastAPI runs each plain `def` dependency in its
thread pool, and those hops were a tenth of a list page's CPU. The ones that wait on the
database stay plain functions, off the event loop.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from backend.api.accounts import (
    AuthenticationError,
    Principal,
    TokenRecord,
    mark_used,
    read_token,
)
from backend.api.context import ApiContext
from backend.api.problems import Problem, is_outage
from backend.api.read_cache import READ_METHODS
from backend.api.security import Role
from backend.core.audit_chain import EventType
from backend.core.database import session_scope
from backend.core.types import utcnow

log = structlog.get_logger(__name__)
_bearer = HTTPBearer(auto_error=False, description="An API token: `finops users token NAME`")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="finops"'}


async def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


ContextDep = Annotated[ApiContext, Depends(get_context)]


async def get_session(context: ContextDep, request: Request) -> AsyncIterator[Session]:
    """One session per request. Routes that change state commit it themselves, before they
    answer; anything not committed is rolled back when the session closes. GET and HEAD
    read without a transaction: nothing to roll back, so closing does no I/O, and the
    request makes no thread-pool hop for it (under load each hop waits its turn behind
    every request the event loop has ready)."""
    reading = request.method in READ_METHODS
    factory = context.read_session_factory if reading else context.session_factory
    session = factory()  # no I/O yet: it connects on first use
    try:
        yield session
    finally:
        if reading:
            session.close()
        else:
            await run_in_threadpool(session.close)  # the rollback waits on the database


SessionDep = Annotated[Session, Depends(get_session)]


async def current_user(
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
    token, now = credentials.credentials, utcnow()
    try:
        # Revocation and expiry hold on every call: the cached record is dropped when
        # either changes (token_cache.py), and expiry is checked here against it.
        record = context.tokens.get(token)
        if record is None:
            record = await run_in_threadpool(_read_token, context, session, token)
        principal, due = record.check(now)
    except AuthenticationError as exc:
        context.recent_operators.forget(token)
        raise Problem(401, str(exc), kind="unauthenticated", headers=_CHALLENGE) from None
    context.recent_operators.remember(token, record, now)  # for the emergency stop's way in
    if due:  # once a minute a token: its own short transaction, which a read also commits
        await run_in_threadpool(_mark_used, context, principal.token_id, now)
        context.tokens.forget(token)  # the next request reads it again, with this use
    return principal


def _read_token(context: ApiContext, session: Session, token: str) -> TokenRecord:
    version = context.tokens.version()  # before reading: see TokenCache.version
    # In the request's own session (one connection, one transaction for the request).
    record = read_token(session, token)
    context.tokens.put(token, record, version)
    return record


def _mark_used(context: ApiContext, token_id: int, now: dt.datetime) -> None:
    with session_scope(factory=context.session_factory) as marking:
        mark_used(marking, token_id, now)


CurrentUser = Annotated[Principal, Depends(current_user)]


def require(needed: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    async def check(request: Request, user: CurrentUser, context: ContextDep) -> Principal:
        if user.role.allows(needed):
            return user
        if request.method not in READ_METHODS:
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


async def stop_engager(
    request: Request,
    context: ContextDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller of POST /emergency-stop: an operator or higher, checked as every caller
    is; or, when that check cannot reach the database, an operator whose token this process
    checked in full within the break-glass window (break_glass.py)."""
    try:
        user = await current_user(context, session, credentials)
    except Exception as exc:
        if credentials is None or not is_outage(exc):
            raise
        now = utcnow()
        record = context.recent_operators.recall(credentials.credentials, now)
        if record is None:
            raise
        try:
            principal, _ = record.check(now)
        except AuthenticationError:
            raise exc from None
        log.warning(
            "emergency stop: token accepted as checked before the database went down",
            user=principal.username,
            error=str(exc),
        )
        return principal
    return await require(Role.OPERATOR)(request, user, context)


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Approver = Annotated[Principal, Depends(require(Role.APPROVER))]
Administrator = Annotated[Principal, Depends(require(Role.ADMINISTRATOR))]
StopEngager = Annotated[Principal, Depends(stop_engager)]
