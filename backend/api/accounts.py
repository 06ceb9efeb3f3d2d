"""Users and API tokens in the database: create, change, issue, revoke, authenticate.

Every function runs in the caller's session and audits in it (the caller commits), so a
change and its audit event land together. The CLI (`finops users ...`) and the API's
admin routes both call these; nothing here imports FastAPI.
"""

from __future__ import annotations

import datetime as dt
import functools
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from backend.api.security import Role, check_username, hash_password, hash_token, new_token
from backend.api.security import verify_password as _verify_password
from backend.core.audit_chain import EventType
from backend.core.automation_audit_logger import AuditLogger
from backend.core.models import ApiTokenRow, UserRow
from backend.core.types import utcnow

LAST_USED_EVERY = dt.timedelta(minutes=1)  # not a write per request: once a minute is enough
LOGIN_TOKEN_LIFETIME = dt.timedelta(hours=12)


class AccessError(Exception):
    """A refused change to users or tokens; the message says why."""


class UnknownUserError(AccessError, LookupError):
    pass


class UnknownTokenError(AccessError, LookupError):
    pass


class DuplicateUserError(AccessError):
    pass


class AuthenticationError(AccessError):
    """The credentials do not identify an active user; the message says which check failed."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the audit log's actor is `username`."""

    user_id: int
    username: str
    role: Role
    token_id: int


@dataclass(frozen=True)
class IssuedToken:
    row: ApiTokenRow
    token: str  # the clear token: shown once, never stored


def create_user(
    session: Session,
    username: str,
    role: Role,
    *,
    actor: str,
    audit: AuditLogger,
    password: str | None = None,
) -> UserRow:
    name = check_username(username)
    if session.scalar(select(UserRow.id).where(UserRow.username == name)) is not None:
        raise DuplicateUserError(f"user {name!r} exists already")
    row = UserRow(
        username=name,
        role=Role(role).value,
        password_hash=hash_password(password) if password else None,
        disabled=False,
    )
    session.add(row)
    session.flush()
    _audit(audit, session, actor, "user", name, "created", {"role": row.role})
    return row


def update_user(
    session: Session,
    username: str,
    *,
    actor: str,
    audit: AuditLogger,
    role: Role | None = None,
    disabled: bool | None = None,
) -> UserRow:
    row = get_user(session, username)
    before = {"role": row.role, "disabled": row.disabled}
    if role is not None:
        row.role = Role(role).value
    if disabled is not None:
        row.disabled = disabled
    after = {"role": row.role, "disabled": row.disabled}
    if after != before:
        _audit(
            audit, session, actor, "user", row.username, "updated", {"from": before, "to": after}
        )
    return row


def get_user(session: Session, username: str) -> UserRow:
    row = session.scalar(select(UserRow).where(UserRow.username == username))
    if row is None:
        raise UnknownUserError(f"no user {username!r}")
    return row


def list_users(session: Session) -> list[tuple[UserRow, int]]:
    """Each user with the number of tokens that still work."""
    now = utcnow()
    live = (
        select(ApiTokenRow.user_id, func.count().label("n"))
        .where(ApiTokenRow.revoked_at.is_(None))
        .where((ApiTokenRow.expires_at.is_(None)) | (ApiTokenRow.expires_at > now))
        .group_by(ApiTokenRow.user_id)
        .subquery()
    )
    rows = session.execute(
        select(UserRow, func.coalesce(live.c.n, 0))
        .outerjoin(live, live.c.user_id == UserRow.id)
        .order_by(UserRow.username)
    )
    return [(user, int(n)) for user, n in rows]


def list_tokens(session: Session, username: str | None = None) -> list[tuple[ApiTokenRow, str]]:
    query = select(ApiTokenRow, UserRow.username).join(UserRow, UserRow.id == ApiTokenRow.user_id)
    if username is not None:
        query = query.where(UserRow.username == username)
    return [(t, u) for t, u in session.execute(query.order_by(ApiTokenRow.id))]


def issue_token(
    session: Session,
    username: str,
    *,
    actor: str,
    audit: AuditLogger,
    expires_in: dt.timedelta | None,
    name: str = "api",
    now: dt.datetime | None = None,
) -> IssuedToken:
    user = get_user(session, username)
    if user.disabled:
        raise AccessError(f"user {username!r} is disabled: no token is issued")
    now = now or utcnow()
    clear = new_token()
    row = ApiTokenRow(
        user_id=user.id,
        name=name[:128],
        token_hash=hash_token(clear),
        created_at=now,
        expires_at=now + expires_in if expires_in is not None else None,
    )
    session.add(row)
    session.flush()
    details = {"user": user.username, "name": row.name, "expires_at": row.expires_at}
    _audit(audit, session, actor, "api_token", row.id, "issued", details)
    return IssuedToken(row, clear)


def revoke_token(session: Session, token_id: int, *, actor: str, audit: AuditLogger) -> ApiTokenRow:
    row = session.get(ApiTokenRow, token_id)
    if row is None:
        raise UnknownTokenError(f"no API token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        _audit(audit, session, actor, "api_token", row.id, "revoked", {"user_id": row.user_id})
    return row


def authenticate(session: Session, token: str, now: dt.datetime | None = None) -> Principal:
    """The active user behind a clear token, or AuthenticationError naming the failed check;
    its last use recorded in the same session when due."""
    now = now or utcnow()
    principal, due = check_token(session, token, now)
    if due:
        mark_used(session, principal.token_id, now)
    return principal


@dataclass(frozen=True)
class TokenRecord:
    """What a request's token check reads: the token and its user, as stored."""

    principal: Principal
    revoked_at: dt.datetime | None
    expires_at: dt.datetime | None
    last_used_at: dt.datetime | None
    disabled: bool

    def check(self, now: dt.datetime) -> tuple[Principal, bool]:
        """The principal, and whether last_used_at is due to be written (every
        LAST_USED_EVERY); AuthenticationError naming the failed check."""
        token_id = self.principal.token_id
        if self.revoked_at is not None:
            raise AuthenticationError(f"API token {token_id} was revoked")
        if self.expires_at is not None and self.expires_at <= now:
            raise AuthenticationError(
                f"API token {token_id} expired at {self.expires_at:%Y-%m-%d %H:%M}Z"
            )
        if self.disabled:
            raise AuthenticationError(f"user {self.principal.username!r} is disabled")
        due = self.last_used_at is None or now - self.last_used_at >= LAST_USED_EVERY
        return self.principal, due


def read_token(session: Session, token: str) -> TokenRecord:
    """The stored record of a clear token; AuthenticationError when there is none."""
    # Plain columns, not ORM objects: this runs on every request the caches do not answer.
    t, u = ApiTokenRow, UserRow
    row = session.execute(
        select(t.id, t.revoked_at, t.expires_at, t.last_used_at)
        .add_columns(u.id.label("user_id"), u.username, u.role, u.disabled)
        .join(u, u.id == t.user_id)
        .where(t.token_hash == hash_token(token.strip()))
    ).first()
    if row is None:
        raise AuthenticationError("unknown API token")
    principal = Principal(row.user_id, row.username, Role(row.role), row.id)
    return TokenRecord(principal, row.revoked_at, row.expires_at, row.last_used_at, row.disabled)


def check_token(session: Session, token: str, now: dt.datetime) -> tuple[Principal, bool]:
    """The active user behind a clear token, and whether its last_used_at is due to be
    written (every LAST_USED_EVERY); reads only."""
    return read_token(session, token).check(now)


def mark_used(session: Session, token_id: int, now: dt.datetime) -> None:
    """last_used_at = now, unless another request has moved it within LAST_USED_EVERY since
    this one read it. Requests sharing a token all see it due at the same moment: each
    would rewrite the row in turn, waiting for the one before to commit (a queue once a
    minute, in the latency's tail). With the condition, the first writes and the others,
    once it has committed, find nothing to do; and last_used_at never goes back."""
    session.execute(
        update(ApiTokenRow)
        .where(
            ApiTokenRow.id == token_id,
            (ApiTokenRow.last_used_at.is_(None))
            | (ApiTokenRow.last_used_at <= now - LAST_USED_EVERY),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )


def login(session: Session, username: str, password: str, *, audit: AuditLogger) -> IssuedToken:
    """A short-lived token for a password (the dashboard's sign-in); failures are audited."""
    user = session.scalar(select(UserRow).where(UserRow.username == username))
    # scrypt runs for unknown names too, so the answer's timing does not tell which exist.
    stored = user.password_hash if user is not None else _dummy_hash()
    ok = _verify_password(password, stored) and user is not None and not user.disabled
    outcome = "succeeded" if ok else "refused"
    # Audited in its own transaction: a refused sign-in must stay on record after rollback.
    audit.log(
        EventType.LOGIN,
        subject_type="user",
        subject_id=username[:128] or "?",
        actor=username[:128] or "?",
        outcome=outcome,
    )
    if not ok:
        # One message for every cause: the caller must not learn which names exist.
        raise AuthenticationError("unknown user or wrong password")
    return issue_token(
        session,
        username,
        actor=username,
        audit=audit,
        expires_in=LOGIN_TOKEN_LIFETIME,
        name="login",
    )


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def _audit(
    audit: AuditLogger,
    session: Session,
    actor: str,
    subject_type: str,
    subject_id: str | int,
    outcome: str,
    details: Mapping[str, object],
) -> None:
    # No access-control event type exists yet: CONFIG_CHANGE, with the subject type saying what.
    audit.record(
        EventType.CONFIG_CHANGE,
        subject_type=subject_type,
        subject_id=subject_id,
        actor=actor,
        outcome=outcome,
        details=dict(details),
        session=session,
    )
