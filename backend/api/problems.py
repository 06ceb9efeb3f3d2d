"""Errors as RFC 9457 (7807) problem details: application/problem+json, never a traceback.

Routes raise `Problem`; FastAPI's own errors (404 for an unknown path, 405, validation) are
rewritten into the same shape; anything unexpected is logged with an id and answered with a
500 that carries the id and nothing else about the failure.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.core.database import DatabaseUnavailableError

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:finops:problem:"


class Problem(Exception):  # noqa: N818 - it is the problem itself, as RFC 9457 names it
    """Raise from a route: becomes a problem details response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.title = title or HTTPStatus(status).phrase
        self.headers = dict(headers or {})
        self.extensions = extensions


def not_found(what: str, ident: object) -> Problem:
    return Problem(404, f"no {what} {ident}", kind="not-found")


def problem_response(
    request: Request,
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + kind if kind else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **(extensions or {}),
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


async def _problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(
        request,
        exc.status,
        exc.detail,
        kind=exc.kind,
        title=exc.title,
        headers=exc.headers,
        extensions=exc.extensions,
    )


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such path: {request.method} {request.url.path}"
    return problem_response(request, exc.status_code, detail, headers=exc.headers)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_error(e) for e in exc.errors()]
    summary = "; ".join(f"{e['location']}: {e['message']}" for e in errors[:5])
    return problem_response(
        request,
        422,
        summary or "the request is not valid",
        kind="request-validation",
        title="Invalid request",
        extensions={"errors": errors},
    )


def _error(error: Mapping[str, Any]) -> dict[str, str]:
    # The input is left out on purpose: it may be a password or a token.
    loc: Sequence[Any] = error.get("loc", ())
    return {
        "location": ".".join(str(part) for part in loc) or "request",
        "message": str(error.get("msg", "invalid")),
        "type": str(error.get("type", "value_error")),
    }


async def _database(request: Request, exc: Exception) -> JSONResponse:
    log.error("database unavailable", path=request.url.path, error=_first_line(exc))
    return problem_response(
        request,
        503,
        "the database is unavailable; try again later (GET /health/ready says why)",
        kind="database-unavailable",
        headers={"Retry-After": "10"},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    error_id = uuid.uuid4().hex[:12]
    log.exception("unhandled error", error_id=error_id, path=request.url.path, exc_info=exc)
    return problem_response(
        request,
        500,
        f"an unexpected error occurred; the server log has it under error id {error_id}",
        kind="internal-error",
        extensions={"error_id": error_id},
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(DatabaseUnavailableError, _database)
    app.add_exception_handler(DBAPIError, _database_or_unexpected)
    app.add_exception_handler(Exception, _unexpected)


async def _database_or_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A lost or refused connection is an outage (503); any other driver error is a bug (500).
    assert isinstance(exc, DBAPIError)
    if exc.connection_invalidated or type(exc).__name__ in ("OperationalError", "InterfaceError"):
        return await _database(request, exc)
    return await _unexpected(request, exc)


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return (str(original).strip().splitlines() or [type(original).__name__])[0]
