"""Logs go to stderr, with upper-case levels: the runbook greps for ERROR and CRITICAL."""

from __future__ import annotations

import subprocess
import sys


def test_levels_are_upper_case_on_stderr() -> None:
    code = (
        "from backend.logging_setup import configure_logging; import structlog; "
        "configure_logging(); structlog.get_logger('t').error('safety check failed', rule='x')"
    )
    for fmt in ("console", "json"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={"FINOPS_LOG_FORMAT": fmt, "PATH": "/usr/bin:/bin"},
            check=True,
        )
        assert done.stdout == ""
        assert "ERROR" in done.stderr and "safety check failed" in done.stderr, done.stderr
