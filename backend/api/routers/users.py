"""Users and their API tokens (administrator), and the caller's own session: sign in with a
password (the future dashboard), who am I, sign out."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from backend.api import accounts
from backend.api.deps import Administrator, ContextDep, CurrentUser, SessionDep
from backend.api.problems import Problem
from backend.api.routers import API_PREFIX
from backend.api.security import Role
from backend.core.models import UserRow

router = APIRouter(prefix=API_PREFIX, tags=["users"])
MAX_TOKEN_DAYS = 3650


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    role: Role
    disabled: bool
    created_at: dt.datetime
    has_password: bool = False
    active_tokens: int = 0


class UserIn(BaseModel):
    username: str = Field(min_length=2, max_length=64)
    role: Role
    password: str | None = Field(None, min_length=12, max_length=1024)


class UserChange(BaseModel):
    role: Role | None = None
    disabled: bool | None = None


class TokenIn(BaseModel):
    name: str = Field("api", min_length=1, max_length=128)
    expires_days: int = Field(90, ge=1, le=MAX_TOKEN_DAYS)


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


class IssuedOut(TokenOut):
    username: str
    token: str = Field(description="Shown this once; only its hash is kept.")


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


class MeOut(BaseModel):
    username: str
    role: Role
    token_id: int


@router.get("/users", response_model=list[UserOut])
def list_users(session: SessionDep, _: Administrator) -> list[UserOut]:
    return [_user(u, n) for u, n in accounts.list_users(session)]


@router.post("/users", response_model=UserOut, status_code=201)
def create_user(
    body: UserIn, session: SessionDep, context: ContextDep, admin: Administrator
) -> UserOut:
    try:
        row = accounts.create_user(
            session,
            body.username,
            body.role,
            actor=admin.username,
            audit=context.audit(),
            password=body.password,
        )
    except accounts.DuplicateUserError as exc:
        raise Problem(409, str(exc), kind="duplicate-user") from None
    except ValueError as exc:
        raise Problem(422, str(exc), kind="invalid-user", title="Invalid request") from None
    session.commit()
    return _user(row, 0)


@router.patch("/users/{username}", response_model=UserOut)
def change_user(
    username: str, body: UserChange, session: SessionDep, context: ContextDep, admin: Administrator
) -> UserOut:
    if username == admin.username and (body.disabled or body.role not in (None, admin.role)):
        # The last administrator could lock everyone out; another administrator must do it.
        raise Problem(409, "you cannot demote or disable yourself", kind="self-change")
    try:
        row = accounts.update_user(
            session,
            username,
            actor=admin.username,
            audit=context.audit(),
            role=body.role,
            disabled=body.disabled,
        )
    except accounts.UnknownUserError as exc:
        raise Problem(404, str(exc), kind="not-found") from None
    session.commit()
    return _user(row, 0)


@router.post("/users/{username}/tokens", response_model=IssuedOut, status_code=201)
def issue_token(
    username: str, body: TokenIn, session: SessionDep, context: ContextDep, admin: Administrator
) -> IssuedOut:
    try:
        issued = accounts.issue_token(
            session,
            username,
            actor=admin.username,
            audit=context.audit(),
            expires_in=dt.timedelta(days=body.expires_days),
            name=body.name,
        )
    except accounts.UnknownUserError as exc:
        raise Problem(404, str(exc), kind="not-found") from None
    except accounts.AccessError as exc:
        raise Problem(409, str(exc), kind="user-disabled") from None
    session.commit()
    return _issued(issued, username)


@router.get("/users/{username}/tokens", response_model=list[TokenOut])
def list_tokens(username: str, session: SessionDep, _: Administrator) -> list[TokenOut]:
    try:
        accounts.get_user(session, username)
    except accounts.UnknownUserError as exc:
        raise Problem(404, str(exc), kind="not-found") from None
    return [TokenOut.model_validate(t) for t, _u in accounts.list_tokens(session, username)]


@router.post("/tokens/{token_id}/revoke", response_model=TokenOut)
def revoke_token(
    token_id: int, session: SessionDep, context: ContextDep, admin: Administrator
) -> TokenOut:
    try:
        row = accounts.revoke_token(session, token_id, actor=admin.username, audit=context.audit())
    except accounts.UnknownTokenError as exc:
        raise Problem(404, str(exc), kind="not-found") from None
    session.commit()
    return TokenOut.model_validate(row)


@router.post("/auth/login", response_model=IssuedOut)
def login(body: LoginIn, session: SessionDep, context: ContextDep) -> IssuedOut:
    """A token valid for 12 hours for a user with a password."""
    try:
        issued = accounts.login(session, body.username, body.password, audit=context.audit())
    except accounts.AuthenticationError as exc:
        raise Problem(
            401, str(exc), kind="unauthenticated", headers={"WWW-Authenticate": "Bearer"}
        ) from None
    session.commit()
    return _issued(issued, body.username)


@router.get("/auth/me", response_model=MeOut)
def me(user: CurrentUser) -> MeOut:
    return MeOut(username=user.username, role=user.role, token_id=user.token_id)


@router.post("/auth/logout", response_model=TokenOut)
def logout(user: CurrentUser, session: SessionDep, context: ContextDep) -> TokenOut:
    """Revoke the token this request was made with."""
    row = accounts.revoke_token(session, user.token_id, actor=user.username, audit=context.audit())
    session.commit()
    return TokenOut.model_validate(row)


def _user(row: UserRow, active: int) -> UserOut:
    out = UserOut.model_validate(row)
    out.has_password, out.active_tokens = row.password_hash is not None, active
    return out


def _issued(issued: accounts.IssuedToken, username: str) -> IssuedOut:
    return IssuedOut(
        **TokenOut.model_validate(issued.row).model_dump(), username=username, token=issued.token
    )
