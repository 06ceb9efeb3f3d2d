"""GET /metrics: one CollectorRegistry per app (never the global one), holding the database
collector, the process collectors and the API's own counters: requests, and audit events
this process could not write (the failed write leaves nothing in the log to count later).

Several worker processes (`finops serve --workers N`) share one view: with
PROMETHEUS_MULTIPROC_DIR set (serve sets it), each process writes its counters and
histograms to files there, and whichever worker answers a scrape reports their sums, so
a counter neither jumps between workers' values nor goes back. The process collector is
left out then (it would describe only the worker that answered); the database collector
reads the database as before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.api.context import ApiContext
from backend.api.metrics_collector import FinOpsCollector
from backend.api.read_cache import HEADER as READ_CACHE_HEADER
from backend.core.audit_failures import CountedAuditLogError, CountingAuditLogger
from backend.core.automation_audit_logger import AuditLogError, AuditLogger

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """Where the workers' metric files are, when several processes serve (else None)."""
    return os.environ.get(MULTIPROCESS_ENV) or None


@contextmanager
def shared_metrics(workers: int) -> Iterator[str | None]:
    """For `workers` > 1: an empty PROMETHEUS_MULTIPROC_DIR while the block runs (the one
    set already, emptied, or a temporary one, removed after). Set before the workers start:
    prometheus_client reads it when a process first imports it."""
    if workers <= 1:
        yield multiprocess_dir()
        return
    given = multiprocess_dir()
    if given is not None:
        for stale in Path(given).glob("*.db"):  # a previous run's counts: not this run's
            stale.unlink()
        yield given
        return
    made = tempfile.mkdtemp(prefix="finops-metrics-")
    os.environ[MULTIPROCESS_ENV] = made
    try:
        yield made
    finally:
        os.environ.pop(MULTIPROCESS_ENV, None)
        shutil.rmtree(made, ignore_errors=True)


class RequestMetrics:
    """Counts and times every HTTP request (plain ASGI: Starlette's BaseHTTPMiddleware cost
    a task and a stream per request)."""

    def __init__(
        self,
        app: ASGIApp,
        record: Callable[[Scope, int, float], None],
        on_audit_failure: Callable[[], None],
        on_cache_source: Callable[[str], None],
    ) -> None:
        self._app, self._record, self._on_audit_failure = app, record, on_audit_failure
        self._on_cache_source = on_cache_source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises past every handler

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == READ_CACHE_HEADER:
                        self._on_cache_source(value.decode("latin-1"))
            await send(message)

        try:
            await self._app(scope, receive, sending)
        except Exception as exc:
            status = 500
            if isinstance(exc, AuditLogError) and not isinstance(exc, CountedAuditLogError):
                self._on_audit_failure()
            raise
        finally:
            self._record(scope, status, time.perf_counter() - started)


def install_metrics(app: FastAPI, context: ApiContext) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(FinOpsCollector(context))
    shared = multiprocess_dir()
    own: CollectorRegistry | None = registry
    if shared is not None:  # every worker's counters and histograms, summed
        MultiProcessCollector(registry, path=shared)  # type: ignore[no-untyped-call]
        own = None  # this process's are in its files: registered here, they would count twice
    else:
        ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    requests = Counter(
        "finops_api_requests",
        "API requests by route and status",
        ["method", "route", "status"],
        registry=own,
    )
    latency = Histogram(
        "finops_api_request_duration_seconds",
        "API request latency by route",
        ["method", "route"],
        registry=own,
    )
    rollback_errors = Counter(
        "finops_rollback_request_errors",
        "Rollback requests (an action's or a run's) answered with a 5xx",
        registry=own,
    )
    audit_failures = Counter(
        "finops_audit_write_failures",
        "Audit events this API process could not write",
        registry=own,
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

    def record(scope: Scope, status: int, seconds: float) -> None:
        # The route's template, never the raw path: ids in paths would explode the series.
        route = getattr(scope.get("route"), "path", "unmatched")
        requests.labels(scope["method"], route, str(status)).inc()
        if status >= 500 and route.endswith("/rollback"):
            rollback_errors.inc()  # unlabelled, so it exists (at 0) before the first one
        latency.labels(scope["method"], route).observe(seconds)

    cache_answers = Counter(
        "finops_api_read_cache_answers",
        "API list pages by where the answer came from: hit or shared (memory), miss (the "
        "database), off (no change feed: nothing kept)",
        ["source"],
        registry=own,
    )

    def cache_source(source: str) -> None:
        cache_answers.labels(source).inc()

    app.add_middleware(
        RequestMetrics,
        record=record,
        on_audit_failure=audit_failures.inc,
        on_cache_source=cache_source,
    )

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        # A sync route: the collector queries the database, so it runs in the thread pool.
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.state.metrics_registry = registry
    return registry
