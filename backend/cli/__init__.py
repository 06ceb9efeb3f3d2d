"""The `finops` command. Each group lives in its own module; this one wires them up."""

from __future__ import annotations

import sys

from backend.cli.app import app


def main() -> None:
    from backend.cli import actions, audit, db, demo, emergency, policy, scan  # noqa: F401 - registers
    from backend.logging_setup import configure_logging

    configure_logging()
    sys.exit(app(standalone_mode=True))
