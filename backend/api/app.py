"""The application factory. Nothing is read or connected at import; `create_app()` reads the
settings (refusing the default secret outside development) and wires the routers."""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.api.context import ApiContext
from backend.api.dashboard import install_dashboard
from backend.api.metrics import install_metrics
from backend.api.problems import install_problem_handlers
from backend.api.read_cache import ReadCache
from backend.api.routers import (
    actions,
    audit,
    dashboard_views,
    emergency,
    engine,
    health,
    inventory,
    opportunities,
    overrides,
    policies,
    runs,
    savings,
    users,
)
from backend.config import Settings, get_settings
from backend.core.db_deadline import answer_within

DESCRIPTION = """Find AWS waste and remove it, safely.

Send `Authorization: Bearer <token>` (`finops users token NAME`). Roles, each including the
ones before it: **viewer** reads; **operator** engages the emergency stop, plans, retries,
disables and pauses; **approver** approves, rejects, rolls back, enables and resumes;
**administrator** releases the emergency stop and manages users. Errors are RFC 9457
problem details (`application/problem+json`).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.require_safe_secret()
    context = ApiContext(settings)
    app = FastAPI(
        title="FinOps Automation",
        version="1",
        description=DESCRIPTION,
        lifespan=functools.partial(_lifespan, context=context),
    )
    app.state.context = context
    install_problem_handlers(app)
    # Inside the request metrics (added next), so that answers from memory are counted too.
    app.add_middleware(ReadCache, pages=context.pages, tokens=context.tokens)
    install_metrics(app, context)
    for module in (
        health,
        inventory,
        opportunities,
        policies,
        overrides,
        actions,
        runs,
        emergency,
        audit,
        savings,
        engine,
        users,
        dashboard_views,
    ):
        app.include_router(module.router)
    install_dashboard(app)  # the web pages at /dashboard/, and / redirects there
    app.add_middleware(DatabaseLimit, seconds=settings.api_database_timeout_seconds)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI, context: ApiContext) -> AsyncIterator[None]:
    """The change feed listens while the app serves: without it, nothing is cached."""
    # What importing and starting made (modules, ORM mappers, pydantic schemas: ~180,000
    # objects) lives as long as the process. Frozen, the collector's full passes no longer
    # walk it: under load one took 150 - 230 ms, a pause of every request of the worker.
    # Once a process: a second app in it (tests make many) adds nothing worth freezing.
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()
    feed = context.change_feed
    if feed is not None:
        feed.start()
    try:
        yield
    finally:
        if feed is not None:
            await run_in_threadpool(feed.stop)


class DatabaseLimit:
    """Each request's PostgreSQL statements answer within `seconds` or fail (503): a paused
    database must not hold the API's threads, and its callers, forever."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Set in the request's context before the routes run: their thread-pool calls
        # copy it.
        with answer_within(self.seconds):
            await self.app(scope, receive, send)
