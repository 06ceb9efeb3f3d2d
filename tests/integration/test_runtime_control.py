"""The runbook's AutoRemediationEngine against real workers: status, the emergency stop
(persisted, in Redis, broadcast), and a retry that re-queues a failed action."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from backend.core.auto_remediation_engine import AutoRemediationEngine
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop
from backend.core.models import ActionRow, WorkerHeartbeatRow
from backend.core.stop_fast_path import STOP_KEY
from backend.runtime.celery_app import app
from tests.integration.execution_fleet import Fleet, live_fleet
from tests.support.workers import FINOPS, wait_until, workers

pytestmark = [pytest.mark.moto_server]


@pytest.fixture
def fleet(
    moto_url: str,
    postgres_url: str,
    broker: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Fleet:
    return live_fleet(moto_url, monkeypatch, tmp_path, 6)


def actions() -> dict[int, ActionRow]:
    with session_scope() as session:
        return {
            r.id: r for r in session.scalars(select(ActionRow).where(ActionRow.action == "stop"))
        }


def live_workers() -> int:
    with session_scope() as session:
        return len(session.scalars(select(WorkerHeartbeatRow)).all())


def test_stop_status_resume_and_retry_on_workers(
    fleet: Fleet,
    broker: redis.Redis,
    tmp_path: Path,
) -> None:
    engine = AutoRemediationEngine()
    assert engine.dispatcher.name == "celery"
    with workers(tmp_path, 2) as pool:
        wait_until(lambda: live_workers() == 2, 60, "two worker heartbeats")
        status = engine.get_status()
        assert status.state == "running", status.problems
        assert len(status.workers) == 2 and all("STALE" not in w for w in status.workers)
        assert "queued: scans" in status.backlog

        # the stop first: persisted, mirrored in Redis, broadcast; then nothing is claimed
        result = engine.emergency_stop(reason="runtime test", actor="oncall")
        assert broker.get(STOP_KEY) == b"runtime test"
        assert any("2 worker(s) acknowledged" in n for n in result.notes), result.notes
        app.send_task("finops.dispatch_due")
        time.sleep(3)
        assert {r.state for r in actions().values() if r.state != "blocked"} == {"approved"}
        assert engine.get_status().state.startswith("stopped")

        # released: the workers take up actions again at the reconciler's tick
        EmergencyStop().release("admin", is_admin=True)
        assert broker.get(STOP_KEY) is None
        app.send_task("finops.reconcile")
        wait_until(
            lambda: all(r.state in ("succeeded", "blocked") for r in actions().values()),
            60,
            "the approved stops to run",
        )

        # a failed action, retried: judged again, approved, and queued for a worker
        failed = next(r for r in actions().values() if r.state == "succeeded")
        fleet.ec2().start_instances(InstanceIds=[failed.resource_id])
        with session_scope() as session:
            row = session.get(ActionRow, failed.id)
            assert row is not None
            row.state, row.error = "failed", "made to fail by the test"
        outcome = engine.retry_action(failed.id, actor="oncall", dry_run=False)
        assert outcome.result == "queued", outcome
        wait_until(lambda: actions()[failed.id].state == "succeeded", 60, "the retry to run")
        assert fleet.instance_state(failed.resource_id) == "stopped"
        assert not pool.logs().count("Traceback"), pool.logs()


def test_resume_tells_the_workers_to_consume_actions_again_without_the_scheduler(
    fleet: Fleet, broker: redis.Redis, tmp_path: Path
) -> None:
    """The stop's broadcast makes the workers stop consuming the actions queue; `finops
    resume` must bring them back itself: the scheduler (one replica) may not be running,
    and until its next reconcile tick queued actions would wait."""
    engine = AutoRemediationEngine()
    with workers(tmp_path, 2) as pool:
        wait_until(lambda: live_workers() == 2, 60, "two worker heartbeats")
        # The CLI's brake tells the workers as the runbook's engine call does.
        stopped = subprocess.run(
            [FINOPS, "emergency-stop", "--reason", "runtime test", "--actor", "oncall"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "2 worker(s) acknowledged the stop broadcast" in stopped.stdout, stopped.stdout

        resumed = subprocess.run(
            [FINOPS, "resume", "--actor", "admin", "--i-am-admin"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "released by admin" in resumed.stdout
        assert "2 worker(s) acknowledged the resume broadcast" in resumed.stdout

        report = engine.execute(dry_run=False)  # queued; no reconcile tick is ever sent
        assert report.batch, report
        wait_until(
            lambda: all(r.state in ("succeeded", "blocked") for r in actions().values()),
            60,
            "the queued stops to run after the resume",
        )
        assert broker.llen("actions") == 0
        assert not pool.logs().count("Traceback"), pool.logs()
