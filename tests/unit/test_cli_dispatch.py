"""`finops NAME` imports the module that registers NAME, and only that one."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from backend.cli import COMMAND_MODULES, modules_for
from backend.cli.app import app

ALL = sorted(set(COMMAND_MODULES.values()))


def _registered() -> dict[str, str]:
    """Each top-level command or group, and the module its command functions live in."""
    for module in ALL:
        importlib.import_module(f"backend.cli.{module}")
    found = {
        ci.name or ci.callback.__name__.replace("_", "-"): ci.callback.__module__
        for ci in app.registered_commands
        if ci.callback
    }
    for group in app.registered_groups:
        modules = {
            c.callback.__module__ for c in group.typer_instance.registered_commands if c.callback
        }
        assert len(modules) == 1, f"group {group.name} spreads over {modules}"
        found[str(group.name)] = modules.pop()
    return found


def test_the_table_names_every_command_and_the_module_that_registers_it() -> None:
    table = {name: f"backend.cli.{module}" for name, module in COMMAND_MODULES.items()}
    assert _registered() == table


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["scan", "--dry-run"], ["scan"]),
        (["emergency-stop", "--reason", "x"], ["emergency"]),
        (["policy", "validate", "p.yml"], ["policy"]),
        ([], ALL),
        (["--help"], ALL),
        (["scna"], ALL),  # Typer refuses it and suggests `scan`: it must know them all
    ],
)
def test_the_modules_imported_for_a_command_line(argv: list[str], expected: list[str]) -> None:
    assert modules_for(argv) == expected


def test_shell_completion_imports_them_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_FINOPS_COMPLETE", "complete_bash")
    assert modules_for(["scan"]) == ALL


def test_a_scan_does_not_import_the_action_engine() -> None:
    code = (
        "import sys; sys.argv = ['finops', 'scan', '--help']\n"
        "from backend.cli import main\n"
        "try:\n    main()\nexcept SystemExit as done:\n    assert done.code == 0, done.code\n"
        "print('backend.core.action_engine' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert "--policies" in out.stdout  # the scan's own help was printed
