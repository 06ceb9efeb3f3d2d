"""The `finops` command. Each group lives in its own module; this one wires them up."""

from __future__ import annotations

import importlib
import os
import sys

from backend.cli.app import app

# Each top-level command, and the module of backend.cli that registers it. `finops NAME ...`
# imports that module alone: importing them all took 1.1 s, most of it what the action
# engine needs, before a scan sent its first request. Anything else (no command, --help, a
# name that is not here, shell completion) imports them all, so that Typer can list the
# commands or refuse an unknown one. tests/unit/test_cli_dispatch.py holds this table to
# what the modules register.
COMMAND_MODULES = {
    "actions": "actions",
    "apply": "actions",
    "plan": "actions",
    "status": "actions",
    "audit": "audit",
    "db": "db",
    "demo": "demo",
    "emergency-stop": "emergency",
    "resume": "emergency",
    "policy": "policy",
    "rollback-watch": "rollback_watch",
    "scheduler": "runtime",
    "worker": "runtime",
    "scan": "scan",
    "serve": "serve",
    "users": "users",
}


def modules_for(argv: list[str]) -> list[str]:
    """The modules to import for this command line (argv without the program's name)."""
    completing = any(key.endswith("_COMPLETE") for key in os.environ)
    named = COMMAND_MODULES.get(argv[0]) if argv and not completing else None
    return [named] if named else sorted(set(COMMAND_MODULES.values()))


def main() -> None:
    for module in modules_for(sys.argv[1:]):
        importlib.import_module(f"backend.cli.{module}")  # registers its commands
    from backend.logging_setup import configure_logging

    configure_logging()
    sys.exit(app(standalone_mode=True))
