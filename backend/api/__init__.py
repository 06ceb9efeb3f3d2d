"""The HTTP API: `create_app()` builds it; `finops serve` runs it under uvicorn."""

from __future__ import annotations

from backend.api.app import create_app

__all__ = ["create_app"]
