"""`finops serve`: the HTTP API under uvicorn, in one process or several."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from backend.cli.app import app, console, handle_errors, settings

FACTORY = "backend.api.app:create_app"  # what each worker process imports and calls


@app.command()
@handle_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 in a container).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Worker processes sharing the port (uvicorn); /metrics sums their counters.",
        ),
    ] = 1,
) -> None:
    """Run the API. Refuses the default FINOPS_SECRET_KEY outside development."""
    import uvicorn

    from backend.api import create_app
    from backend.api.metrics import shared_metrics
    from backend.core.migrations import ensure_embedded_schema

    config = settings()
    config.require_safe_secret()  # before anything listens: a SettingsError exits with code 2
    # The runbook's services print reports for a terminal; a server's stdout is not one.
    os.environ.setdefault("FINOPS_RUNBOOK_ECHO", "0")
    # Embedded SQLite migrates itself; a server database is only checked (/health/ready).
    ensure_embedded_schema(config.effective_database_url)  # once, before any worker starts
    console.print(f"FinOps Automation API on http://{host}:{port} (docs at /docs)")
    level = os.environ.get("FINOPS_LOG_LEVEL", "warning").lower()
    if workers == 1:
        uvicorn.run(create_app(config), host=host, port=port, log_level=level, proxy_headers=True)
        return
    # Each worker builds its app from the environment (the settings above came from it too).
    with shared_metrics(workers):
        uvicorn.run(
            FACTORY,
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level=level,
            proxy_headers=True,
        )
