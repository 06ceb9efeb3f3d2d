"""Errors as RFC 9457 (7807) problem details: application/problem+json, never a traceback.

Routes raise `Problem`; FastAPI's own errors (404 for an unknown path, 405, validation) are
rewritten into the same shape; anything unexpected is logged with an id and answered with a
500 that carries the id and nothing else about the failure. The OpenAPI document says so:
every /api operation declares its 422 and its other errors (`default`) as
`application/problem+json` with the `Problem` schema, not FastAPI's HTTPValidationError.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.core.database import DatabaseUnavailableError, error_cause

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
    log.error("database unavailable", path=request.url.path, error=error_cause(exc))
    return problem_response(
        request,
        503,
        "the database is unavailable; try again later (GET /health/ready says why)",
        kind="database-unavailable",
        headers={"Retry-After": "10"},
    )


async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
    # A number from the request that the database or a date cannot hold (an id past 2**63 on
    # SQLite, a duration of a billion days): no row can match it, so it is the request's fault.
    log.info("request value out of range", path=request.url.path, error=error_cause(exc))
    return problem_response(
        request,
        422,
        "a number or date in the request is out of the range this API can store or compute",
        kind="out-of-range",
        title="Invalid request",
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
    app.add_exception_handler(PoolTimeoutError, _database)
    app.add_exception_handler(DBAPIError, _database_or_unexpected)
    app.add_exception_handler(StatementError, _statement_error)
    app.add_exception_handler(OverflowError, _out_of_range)
    app.add_exception_handler(Exception, _unexpected)
    _document_problems(app)


def is_outage(exc: BaseException) -> bool:
    """The database could not be reached or did not answer (not: it refused the request)."""
    if isinstance(exc, DatabaseUnavailableError | PoolTimeoutError):
        return True  # a pool with every connection stuck on a database that does not answer
    return isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or type(exc).__name__ in ("OperationalError", "InterfaceError")
    )


async def _database_or_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A lost or refused connection is an outage (503); a value the database cannot hold is
    # the request's (422); any other driver error is a bug (500).
    assert isinstance(exc, DBAPIError)
    if is_outage(exc):
        return await _database(request, exc)
    if type(exc).__name__ == "DataError":
        return await _not_storable(request, exc)
    return await _unexpected(request, exc)


async def _statement_error(request: Request, exc: Exception) -> JSONResponse:
    # SQLAlchemy wraps what failed while it bound a parameter (a date past year 9999 once
    # converted to UTC is an OverflowError inside)
    if isinstance(getattr(exc, "orig", None), OverflowError):
        return await _out_of_range(request, exc)
    return await _unexpected(request, exc)


async def _not_storable(request: Request, exc: Exception) -> JSONResponse:
    # A NUL in a text, an id past the column's range: PostgreSQL refuses the value itself.
    log.info("request value refused by the database", path=request.url.path, error=error_cause(exc))
    return problem_response(
        request,
        422,
        f"a value in the request cannot be stored or compared: {error_cause(exc)}",
        kind="invalid-value",
        title="Invalid request",
    )


# -- the OpenAPI document -------------------------------------------------------------------

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; `type` names the problem (urn:finops:problem:...).",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "Request validation: each invalid part (the value is never echoed).",
            "items": {
                "type": "object",
                "required": ["location", "message", "type"],
                "properties": {
                    "location": {"type": "string"},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
    "additionalProperties": True,
}
_PROBLEM_CONTENT = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")


def _document_problems(app: FastAPI) -> None:
    """Make the OpenAPI document describe the errors the handlers above really send."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()  # FastAPI's document, cached in app.openapi_schema: edited in place
        for path, operations in schema.get("paths", {}).items():
            if not path.startswith("/api/"):
                continue  # the health probes answer in their own shape
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    responses["422"]["content"] = _PROBLEM_CONTENT
                responses["default"] = {
                    "description": "An error as problem details: 401 without a valid token, "
                    "403 for a role that may not, 404, 409 for a state that does not allow it, "
                    "503 while the database is unavailable",
                    "content": _PROBLEM_CONTENT,
                }
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = PROBLEM_SCHEMA
        text = json.dumps(schema)
        for name in _FASTAPI_VALIDATION:  # FastAPI's 422 body, never sent: drop it if unused
            if f'"#/components/schemas/{name}"' not in text:
                schemas.pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
