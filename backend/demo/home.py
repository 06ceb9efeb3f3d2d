"""The demo's own SQLite database: never the one DATABASE_URL names.

The demo writes a simulated account (its actions, runs, audit events and inventory) as if it
were real; in a user's own database, let alone a production PostgreSQL, that is false data.
So it runs on `<FINOPS_DATA_DIR>/demo/finops.db`, made afresh on each run, with its audit
anchor beside it, and with no Redis (the emergency stop key there is the real workers').
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from backend.config import overridden_environment
from backend.core.database import dispose_engines
from backend.core.file_lock import file_lock

DEMO_SUBDIR = "demo"
_FILES = ("finops.db", "finops.db-wal", "finops.db-shm", "audit-anchor.json")


class DemoBusyError(RuntimeError):
    """Another demo is running on the same data directory."""


@dataclass(frozen=True)
class DemoHome:
    directory: Path
    database_url: str

    @property
    def environment(self) -> dict[str, str]:
        """What a shell needs to use this database with the CLI (REDIS_URL empty: none)."""
        return {
            "FINOPS_DATA_DIR": str(self.directory),
            "DATABASE_URL": self.database_url,
            "REDIS_URL": "",
        }

    def export_line(self) -> str:
        return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in self.environment.items())


@contextmanager
def demo_home(data_dir: Path) -> Iterator[DemoHome]:
    """Point this process at a new, empty demo database for the length of the block.

    Both spellings of each variable are set, so neither the environment nor a `.env` file
    can lead the demo to another database or to Redis. The previous values come back after.
    """
    directory = (data_dir / DEMO_SUBDIR).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    home = DemoHome(directory, f"sqlite:///{directory / 'finops.db'}")
    with _exclusive(directory / "demo.lock"):
        dispose_engines()  # no engine of this process keeps the old file open
        for name in _FILES:
            (directory / name).unlink(missing_ok=True)
        overrides = {
            "FINOPS_DATA_DIR": str(directory),
            "DATABASE_URL": home.database_url,
            "FINOPS_DATABASE_URL": home.database_url,
            "REDIS_URL": "",
            "FINOPS_REDIS_URL": "",
        }
        with overridden_environment(overrides):
            try:
                yield home
            finally:
                dispose_engines()


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    # A second demo on the same directory would delete the first one's database under it.
    with file_lock(lock_path) as held:
        if not held:
            raise DemoBusyError(
                f"another finops demo is running on {lock_path.parent}; wait for it to end "
                "or give this one its own FINOPS_DATA_DIR"
            )
        yield
