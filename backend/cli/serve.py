"""`finops serve`: the HTTP API under uvicorn."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from backend.cli.app import app, console, handle_errors, settings


@app.command()
@handle_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 in a container).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
) -> None:
    """Run the API. Refuses the default FINOPS_SECRET_KEY outside development."""
    import uvicorn

    from backend.api import create_app
    from backend.core.migrations import ensure_embedded_schema

    config = settings()
    config.require_safe_secret()  # before anything listens: a SettingsError exits with code 2
    # The runbook's services print reports for a terminal; a server's stdout is not one.
    os.environ.setdefault("FINOPS_RUNBOOK_ECHO", "0")
    # Embedded SQLite migrates itself; a server database is only checked (/health/ready).
    ensure_embedded_schema(config.effective_database_url)
    console.print(f"FinOps Automation API on http://{host}:{port} (docs at /docs)")
    level = os.environ.get("FINOPS_LOG_LEVEL", "warning").lower()
    uvicorn.run(create_app(config), host=host, port=port, log_level=level, proxy_headers=True)
