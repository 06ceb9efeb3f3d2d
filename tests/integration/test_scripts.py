"""The runbook's scripts, run as the runbook runs them: a subprocess from the repository root."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from backend.config import reset_settings_cache
from backend.core import migrations
from backend.core.action_planner import ActionPlanner
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop
from backend.core.models import ActionRow, WorkerHeartbeatRow
from backend.core.types import utcnow
from tests.integration.execution_support import engine, scan_and_plan, seed
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DEAD_POSTGRES = "postgresql://x@127.0.0.1:1/x"


def run(script: str, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    """The script with the project's python; env values of None remove the variable."""
    environment = dict(os.environ)
    for name, value in env.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture
def sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'runbook.sqlite'}"
    monkeypatch.setenv("DATABASE_URL", url)
    migrations.upgrade(url)
    return url


@pytest.mark.moto_server
def test_health_check_is_healthy(sqlite: str, moto_url: str) -> None:
    done = run("health-check.py", "--exit-code")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name in ("database", "schema", "redis", "workers", "safety system", "emergency stop"):
        assert any(line.startswith(f"ok   {name}:") for line in lines), done.stdout
    assert "not configured (embedded mode" in done.stdout
    assert f"ok   aws:            reachable via {moto_url}: account 123456789012" in lines
    assert lines[-1] == "healthy"

    as_json = json.loads(run("health-check.py", "--json").stdout)
    assert as_json["healthy"] is True
    assert as_json["checks"][0]["name"] == "database"


@pytest.mark.moto_server
def test_health_check_names_a_dead_database(moto_url: str) -> None:
    done = run("health-check.py", "--exit-code", DATABASE_URL=DEAD_POSTGRES)
    assert done.returncode == 1
    assert "FAIL database:       cannot use database postgresql+psycopg://x@127.0.0.1:1/x" in (
        done.stdout
    )
    assert "Connection refused" in done.stdout
    assert "FAIL emergency stop: not checked: the database is unavailable" in done.stdout
    assert done.stdout.splitlines()[-1].startswith("UNHEALTHY: database, schema")
    assert "Traceback" not in done.stdout + done.stderr
    # without --exit-code it reports, and exits 0
    assert run("health-check.py", DATABASE_URL=DEAD_POSTGRES).returncode == 0


@pytest.mark.moto_server
def test_health_check_names_a_dead_redis(sqlite: str, moto_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    done = run("health-check.py", "--exit-code", REDIS_URL=dead)
    assert done.returncode == 1, done.stdout
    assert any(
        line.startswith("FAIL redis:") and "127.0.0.1" in line for line in done.stdout.splitlines()
    ), done.stdout
    assert "UNHEALTHY" in done.stdout.splitlines()[-1] and "redis" in done.stdout.splitlines()[-1]
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.moto_server
def test_health_check_fails_while_the_emergency_stop_is_engaged(sqlite: str, moto_url: str) -> None:
    EmergencyStop().engage("bad deploy", "oncall")
    done = run("health-check.py", "--exit-code")
    assert done.returncode == 1
    assert "FAIL emergency stop: EMERGENCY STOP ENGAGED by oncall" in done.stdout
    assert "bad deploy" in done.stdout
    assert done.stdout.splitlines()[-1] == "UNHEALTHY: emergency stop"


def test_health_check_without_aws_credentials_says_why(sqlite: str) -> None:
    done = run(
        "health-check.py",
        "--exit-code",
        AWS_ACCESS_KEY_ID=None,
        AWS_SECRET_ACCESS_KEY=None,
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
    )
    assert done.returncode == 1
    assert "FAIL aws:            no AWS credentials found" in done.stdout
    assert done.stdout.splitlines()[-1] == "UNHEALTHY: aws"


def test_test_optimization_action_dry_run_without_credentials(
    tmp_path: Path, broker: redis.Redis
) -> None:
    # REDIS_URL is set, as in every finops-api pod: the scratch run must not touch it.
    mine = tmp_path / "mine.sqlite"
    done = run(
        "test-optimization-action.py",
        "--dry-run",
        DATABASE_URL=f"sqlite:///{mine}",
        AWS_ACCESS_KEY_ID=None,
        AWS_SECRET_ACCESS_KEY=None,
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "[setup] a simulated account (moto, in-process)" in out
    assert "blocked (protected-tag: tagged env=prod)" in out
    assert "[execute] #1 would-execute" in out
    assert "(unchanged)" in out
    assert out.splitlines()[-1].startswith("RESULT: PASS")
    assert not mine.exists()  # a scratch database: nothing written to the configured one
    assert broker.dbsize() == 0, broker.keys()  # and no Redis: no queue, key or breaker


@pytest.mark.moto_server
def test_test_optimization_action_dry_run_on_a_configured_account_with_redis(
    sqlite: str, moto_url: str, broker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runbook's Functional Verification step 1 in a pod: REDIS_URL set, an idle
    instance to act on. The scratch action runs here, not as a task for the real workers
    (which would dry-run whatever action of the real database has the same id)."""
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "50")  # one of four may stop
    account = seed(moto_url)
    done = run("test-optimization-action.py", "--dry-run")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Traceback" not in out + done.stderr
    assert "would-execute" in out and account.idle in out, out
    assert out.splitlines()[-1].startswith("RESULT: PASS"), out
    assert broker.llen("actions") == 0
    assert not list(broker.scan_iter("finops:queued:*"))
    assert broker.dbsize() == 0, broker.keys()  # no stop key, breaker or broadcast either
    with session_scope() as session:  # the configured database is left alone
        assert session.scalar(select(func.count()).select_from(ActionRow)) == 0


def test_test_optimization_action_refuses_live_in_dry_run_mode() -> None:
    done = run("test-optimization-action.py", "--live", FINOPS_DRY_RUN=None)
    assert done.returncode == 2
    assert "set FINOPS_DRY_RUN=false" in done.stderr


def test_emergency_resource_check_on_an_empty_database(sqlite: str) -> None:
    done = run("emergency-resource-check.py")
    assert done.returncode == 0, done.stderr
    assert "no actions executed in the last 4h" in done.stdout


@pytest.mark.moto_server
def test_emergency_resource_check_flags_an_undone_action(
    moto_url: str, any_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "50")
    reset_settings_cache()
    account = seed(moto_url)
    scan_and_plan()
    report = engine().execute(dry_run=False)
    (stop,) = [o.action_id for o in report.outcomes if o.result == "succeeded"]
    account.ec2().start_instances(InstanceIds=[account.idle])  # someone started it again

    done = run("emergency-resource-check.py", "--hours", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert f"FLAG #{stop} succeeded stop ec2" in out
    assert "before: running InstanceType=m5.large   after: stopped" in out
    assert "FLAG: back in its pre-state (running InstanceType=m5.large)" in out
    assert f"rollback: finops actions rollback {stop}" in out
    assert f"1 of 1 flagged: #{stop}" in out


@pytest.mark.moto_server
def test_emergency_resource_check_shows_a_rolled_back_delete_and_its_new_volume(
    moto_url: str, any_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """P0 "Assess Damage" after a colleague rolled back a deletion: the action stays in the
    check, with what its rollback did and the volume restored under a NEW id, as it is now
    (not "no actions executed ... nothing to check")."""
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "50")
    reset_settings_cache()
    account = seed(moto_url)
    scan_and_plan()
    with session_scope() as session:
        (delete,) = [r.id for r in session.query(ActionRow).filter_by(state="awaiting_approval")]
        ActionPlanner().approve(session, delete, "approver1")
    (ran,) = engine().execute([delete], dry_run=False).outcomes
    assert ran.result == "succeeded", ran
    undone = engine().rollback(delete, "oncall")
    assert undone.result == "rolled_back", undone
    made = re.search(r"as (vol-\w+)", undone.detail)
    assert made, undone.detail
    restored = made[1]
    assert account.volume_exists(restored) and not account.volume_exists(account.loose_volume)

    done = run("emergency-resource-check.py")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "nothing to check" not in out
    assert f"ok   #{delete} rolled_back delete ebs" in out, out
    assert "rolled back by oncall at " in out and f"as {restored}" in out, out
    gone = account.loose_volume
    assert f"now: {gone} gone, in its place {restored}: available VolumeType=gp3" in out, out
    assert "rollback: already rolled back" in out
    assert "nothing flagged in 1 action(s)" in out


@pytest.mark.moto_server
def test_health_check_uses_the_configured_heartbeat_limit(
    sqlite: str, moto_url: str, broker: redis.Redis
) -> None:
    """FINOPS_HEARTBEAT_STALE_SECONDS=60 and the only worker last seen 120 s ago: gone, as
    get_status says, not alive under a hard-coded 300 s."""
    with session_scope() as session:
        seen = utcnow() - dt.timedelta(seconds=120)
        session.add(WorkerHeartbeatRow(worker="w1@host", last_seen=seen))
    done = run("health-check.py", "--exit-code", FINOPS_HEARTBEAT_STALE_SECONDS="60")
    assert "FAIL workers:        no worker heartbeat in the last 60s (1 stale)" in done.stdout
    assert done.returncode == 1
    fine = run("health-check.py", FINOPS_HEARTBEAT_STALE_SECONDS="300")
    assert "ok   workers:        1 worker(s) alive, last heartbeat 12" in fine.stdout
