"""Logging for the command line and services: structlog to stderr, never stdout.

stdout is for what a person asked for (tables, JSON, the runbook's reports); diagnostics go
to stderr. FINOPS_LOG_LEVEL (default WARNING) and FINOPS_LOG_FORMAT (console|json).
The AWS libraries stay at INFO or above whatever FINOPS_LOG_LEVEL says: at DEBUG they log
the wire (AssumeRole answers with secret keys, session tokens in signed headers).
FINOPS_AWS_WIRE_LOG=1 lets them follow FINOPS_LOG_LEVEL; unsafe, never in production.
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


# Loggers whose DEBUG records carry request and response bodies and signed headers.
_WIRE_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")


def configure_logging() -> None:
    level = getattr(logging, os.environ.get("FINOPS_LOG_LEVEL", "WARNING").upper(), logging.WARNING)
    renderer = (
        structlog.processors.JSONRenderer()
        if os.environ.get("FINOPS_LOG_FORMAT", "console") == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    if os.environ.get("FINOPS_AWS_WIRE_LOG") != "1":
        for name in _WIRE_LOGGERS:
            logging.getLogger(name).setLevel(max(level, logging.INFO))
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _upper_level,
            structlog.processors.TimeStamper(fmt="iso"),
            # A logged exception as Python prints it, in both formats. Left to the renderers,
            # the console one drew it with rich, every frame's local variables included (a
            # bearer token, a password, AWS credentials in botocore's frames) and seconds of
            # CPU a traceback; the JSON one wrote "exc_info": true and no traceback at all.
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
