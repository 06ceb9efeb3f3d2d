"""GET /metrics: one CollectorRegistry per app (never the global one), holding the database
collector, the process collectors and the API's own counters: requests, and audit events
this process could not write (the failed write leaves nothing in the log to count later)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from backend.api.context import ApiContext
from backend.api.metrics_audit import CountedAuditLogError, CountingAuditLogger
from backend.api.metrics_collector import FinOpsCollector
from backend.core.automation_audit_logger import AuditLogError, AuditLogger


def install_metrics(app: FastAPI, context: ApiContext) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(FinOpsCollector(context))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    requests = Counter(
        "finops_api_requests",
        "API requests by route and status",
        ["method", "route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "finops_api_request_duration_seconds",
        "API request latency by route",
        ["method", "route"],
        registry=registry,
    )
    rollback_errors = Counter(
        "finops_rollback_request_errors",
        "Rollback requests (an action's or a run's) answered with a 5xx",
        registry=registry,
    )
    audit_failures = Counter(
        "finops_audit_write_failures",
        "Audit events this API process could not write",
        registry=registry,
    )

    def audit() -> AuditLogger:
        # Every service the routes get from the context writes through this logger, so a
        # failure is counted even when the route handles it (the emergency stop's 503, an
        # unrecorded refusal). A logger made elsewhere (PolicyManager's) is counted below,
        # when its error ends the request.
        return CountingAuditLogger(
            session_factory=context.session_factory, on_failure=audit_failures.inc
        )

    context.audit = audit  # type: ignore[method-assign]

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises past every handler
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        except AuditLogError as exc:
            if not isinstance(exc, CountedAuditLogError):
                audit_failures.inc()
            raise
        finally:
            # The route's template, never the raw path: ids in paths would explode the series.
            route = getattr(request.scope.get("route"), "path", "unmatched")
            requests.labels(request.method, route, str(status)).inc()
            if status >= 500 and route.endswith("/rollback"):
                rollback_errors.inc()  # unlabelled, so it exists (at 0) before the first one
            latency.labels(request.method, route).observe(time.perf_counter() - started)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        # A sync route: the collector queries the database, so it runs in the thread pool.
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.state.metrics_registry = registry
    return registry
