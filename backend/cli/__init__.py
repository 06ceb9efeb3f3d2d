"""The `finops` command. Each group lives in its own module; this one wires them up."""

from __future__ import annotations

import sys

from backend.cli.app import app


def main() -> None:
    from backend.cli import (  # noqa: F401 - registers
        actions,
        audit,
        db,
        demo,
        emergency,
        policy,
        rollback_watch,
        runtime,
        scan,
        serve,
        users,
    )
    from backend.logging_setup import configure_logging

    configure_logging()
    sys.exit(app(standalone_mode=True))
