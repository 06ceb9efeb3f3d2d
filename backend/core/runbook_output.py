"""Readable output for the methods the on-call runbook calls without `print(...)`.

The runbook runs, for example, `python -c "...; AuditLogger().get_recent_actions(hours=1)"`:
the return value is thrown away, so such a method also prints what it found. Code that
calls the same services internally uses their quiet methods, or sets FINOPS_RUNBOOK_ECHO=0.
"""

from __future__ import annotations

import os
import sys


def echo(text: str) -> None:
    """Print a report line for a person at a terminal, unless echo is switched off."""
    if os.environ.get("FINOPS_RUNBOOK_ECHO", "1").lower() in ("0", "false", "no"):
        return
    print(text, file=sys.stdout, flush=True)
