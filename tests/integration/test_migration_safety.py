"""Migrations that stop half-way, run twice at once, wait for locks, or would drop data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from structlog.testing import capture_logs
from typer.testing import CliRunner, Result

from backend.core import migrations
from backend.core.database import get_engine
from tests.support.api_client import seed_old_action

ROOT = Path(__file__).resolve().parents[2]


def finops(*args: str) -> Result:
    import backend.cli.db  # noqa: F401 - registers the commands
    from backend.cli.app import app, console, err

    console.width = err.width = 400  # one line stays one line
    return CliRunner().invoke(app, list(args))


def migrations_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, revision: str, code: str
) -> Path:
    """The project's migrations, with `code` appended to `revision`'s file, in use from now."""
    root = tmp_path / "patched"
    root.mkdir()
    shutil.copy(ROOT / "alembic.ini", root)
    shutil.copytree(
        ROOT / "migrations", root / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )
    (script,) = (root / "migrations" / "versions").glob(f"{revision}_*.py")
    script.write_text(script.read_text() + code)
    monkeypatch.setenv("FINOPS_MIGRATIONS_DIR", str(root / "migrations"))
    return root / "migrations"


def tables(url: str) -> set[str]:
    return set(inspect(get_engine(url)).get_table_names())


def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    monkeypatch.setenv("DATABASE_URL", url)
    from backend.config import reset_settings_cache

    reset_settings_cache()
    return url


INTERRUPTED = """

_real_upgrade = upgrade


def upgrade() -> None:  # noqa: F811 - interrupted after its last statement
    _real_upgrade()
    raise RuntimeError("interrupted (injected)")
"""


def test_a_step_failing_half_way_leaves_the_previous_revision(
    any_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0004 alters opportunities in batch mode (a scratch copy on SQLite): all of it goes."""
    migrations.upgrade(revision="0003")
    before = tables(any_database)
    migrations_copy(tmp_path, monkeypatch, "0004", INTERRUPTED)
    with pytest.raises(
        migrations.MigrationFailedError,
        match=r"interrupted \(injected\) \(the database is at revision 0003\)",
    ):
        migrations.upgrade()
    assert migrations.current_revision() == "0003"
    assert tables(any_database) == before
    monkeypatch.delenv("FINOPS_MIGRATIONS_DIR")
    migrations.upgrade()
    assert migrations.current_revision() == migrations.head_revision()


def test_scratch_tables_an_older_interrupted_run_left_are_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path, monkeypatch)
    migrations.upgrade(revision="0003")
    with get_engine(url).begin() as connection:  # what a run before this fix left behind
        connection.exec_driver_sql("CREATE TABLE _alembic_tmp_opportunities (id INTEGER)")
    with capture_logs() as logs:
        migrations.upgrade()
    assert migrations.current_revision() == migrations.head_revision()
    assert not any(t.startswith("_alembic_tmp_") for t in tables(url))
    assert [e["tables"] for e in logs if "scratch tables" in e["event"]] == [
        ["_alembic_tmp_opportunities"]
    ]


SLOW = """

import os as _os
import time as _time

_real_upgrade = upgrade


def upgrade() -> None:  # noqa: F811 - says it has started, then takes its time
    _real_upgrade()
    open(_os.environ["MIGRATION_STARTED"], "w").close()
    _time.sleep(1.5)
"""

UPGRADE = (
    "from backend.core import migrations; "
    "migrations.upgrade(); print('at', migrations.current_revision())"
)


def test_two_processes_upgrading_one_sqlite_file_both_end_well(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path, monkeypatch)
    migrations.upgrade(revision="0003")
    action = seed_old_action()
    migrations_copy(tmp_path, monkeypatch, "0004", SLOW)
    started = tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MIGRATION_STARTED": str(started)}
    run = [sys.executable, "-c", UPGRADE]
    first = subprocess.Popen(
        run, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert started.exists(), first.communicate()[0]
    started.unlink()
    second = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    out = first.communicate(timeout=120)[0]
    head = migrations.head_revision()
    assert (first.returncode, out.strip().splitlines()[-1]) == (0, f"at {head}"), out
    assert (second.returncode, second.stdout.strip()) == (0, f"at {head}"), second.stderr
    assert not started.exists()  # the second found nothing to do: 0004 ran once
    with get_engine(url).connect() as connection:
        assert connection.exec_driver_sql("SELECT id FROM actions").scalars().all() == [action]
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [
            (head,)
        ]
        assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    assert not any(t.startswith("_alembic_tmp_") for t in tables(url))


def test_a_migration_waiting_for_a_lock_fails_within_the_timeout(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0007 alters actions: behind an old worker's open transaction it must give up, not
    make every later reader of actions queue behind it; 0006, done before it, stays."""
    migrations.upgrade(revision="0005")
    monkeypatch.setenv("FINOPS_MIGRATION_LOCK_TIMEOUT", "0.5")
    worker = create_engine(postgres_url).connect()
    worker.execute(text("SELECT count(*) FROM actions"))  # holds its lock until it ends
    ends = threading.Timer(8, worker.rollback)  # without the timeout, the test still ends
    ends.start()
    try:
        started = time.monotonic()
        with pytest.raises(
            migrations.MigrationFailedError,
            match=r"waited 0\.5 s \(FINOPS_MIGRATION_LOCK_TIMEOUT\) for a lock .*"
            r"`ALTER TABLE actions .*revision 0006\)",
        ):
            migrations.upgrade(revision="0007")  # 0006 goes through, 0007 waits
        assert time.monotonic() - started < 5
    finally:
        ends.cancel()
        worker.close()
    assert migrations.current_revision() == "0006"
    migrations.upgrade()
    assert migrations.current_revision() == migrations.head_revision()


def test_a_bad_lock_timeout_is_named(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINOPS_MIGRATION_LOCK_TIMEOUT", "soon")
    result = finops("db", "upgrade")
    assert result.exit_code == 2 and "FINOPS_MIGRATION_LOCK_TIMEOUT='soon'" in result.output
