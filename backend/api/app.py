"""The application factory. Nothing is read or connected at import; `create_app()` reads the
settings (refusing the default secret outside development) and wires the routers."""

from __future__ import annotations

from fastapi import FastAPI

from backend.api.context import ApiContext
from backend.api.dashboard import install_dashboard
from backend.api.metrics import install_metrics
from backend.api.problems import install_problem_handlers
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
    app = FastAPI(title="FinOps Automation", version="1", description=DESCRIPTION)
    context = ApiContext(settings)
    app.state.context = context
    install_problem_handlers(app)
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
    return app
