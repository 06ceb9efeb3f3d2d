"""Logging for the command line and services: structlog to stderr, never stdout.

stdout is for what a person asked for (tables, JSON, the runbook's reports); diagnostics go
to stderr. FINOPS_LOG_LEVEL (default WARNING) and FINOPS_LOG_FORMAT (console|json).
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def _upper_level(
    _: object, __: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    # ERROR, not error: the runbook greps the logs with `grep -E "(ERROR|CRITICAL|...)"`.
    event["level"] = str(event.get("level", "")).upper()
    return event


def configure_logging() -> None:
    level = getattr(logging, os.environ.get("FINOPS_LOG_LEVEL", "WARNING").upper(), logging.WARNING)
    renderer = (
        structlog.processors.JSONRenderer()
        if os.environ.get("FINOPS_LOG_FORMAT", "console") == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _upper_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
