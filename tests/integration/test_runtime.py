"""The distributed runtime for real: Redis, `finops worker` processes, moto_server, PostgreSQL.

A cycle for two accounts and two regions ends as the embedded mode's does; approved actions
run exactly once across workers; the emergency stop reaches the workers.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from backend.config import reset_settings_cache
from backend.core.auto_remediation_engine import AutoRemediationEngine
from backend.core.database import dispose_engines, session_scope
from backend.core.migrations import upgrade
from backend.core.models import (
    ActionRow,
    AuditEventRow,
    OpportunityRow,
    PolicyCycleRow,
    ResourceRow,
)
from backend.core.policy_manager import PolicyManager
from backend.core.types import utcnow
from backend.runtime.celery_app import app
from tests.integration.aws_fleet import ROLE_NAME, SECOND_ACCOUNT, assumed_credentials, seed_region
from tests.support.servers import scratch_postgres_database
from tests.support.workers import (
    FINOPS,
    RUNTIME_REDIS_URL,
    wait_until,
    workers,
)

pytestmark = [pytest.mark.moto_server]
MOTO_ACCOUNT = "123456789012"
REGIONS = ("us-east-1", "us-west-2")


def outcome() -> tuple[set[tuple[str, ...]], set[tuple[str, ...]]]:
    """What a cycle leaves: the open opportunities and the actions, by resource."""
    with session_scope() as session:
        opportunities = {
            (o.policy_name, r.account_id, r.region, r.resource_id, o.action)
            for o, r in session.execute(
                select(OpportunityRow, ResourceRow)
                .join(ResourceRow, ResourceRow.id == OpportunityRow.resource_pk)
                .where(OpportunityRow.status == "open")
            )
        }
        actions = {
            (a.policy_name, a.account_id, a.region, a.resource_id, a.action, a.state)
            for a in session.scalars(select(ActionRow))
        }
    return opportunities, actions


def blocked_verdicts(differing: set[tuple[str, ...]]) -> dict[str, object]:
    """The safety verdict recorded on each of these actions (by resource id), and the
    details of their blocking events (an owner notice's block is only there)."""
    ids = {a[3] for a in differing}
    with session_scope() as session:
        rows = list(session.scalars(select(ActionRow).where(ActionRow.resource_id.in_(ids))))
        events = session.scalars(
            select(AuditEventRow).where(
                AuditEventRow.subject_type == "action",
                AuditEventRow.subject_id.in_([str(r.id) for r in rows]),
                AuditEventRow.outcome == "blocked",
            )
        )
        why = {e.subject_id: e.details for e in events}
        return {
            r.resource_id: (r.state, r.safety_verdict, r.error, why.get(str(r.id))) for r in rows
        }


def test_a_cycle_on_workers_ends_as_the_embedded_one(
    moto_url: str,
    broker: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for region in REGIONS:
        seed_region(moto_url, region, instances=2)
        seed_region(moto_url, region, assumed_credentials(moto_url), instances=2)
    monkeypatch.setenv("FINOPS_ACCOUNTS", f"{MOTO_ACCOUNT},{SECOND_ACCOUNT}")
    monkeypatch.setenv("FINOPS_ROLE_NAME", ROLE_NAME)
    monkeypatch.setenv("FINOPS_REGIONS", ",".join(REGIONS))

    # the embedded mode first (it only reads AWS: dry-run, no owner notices)
    with scratch_postgres_database() as embedded_url:
        monkeypatch.setenv("DATABASE_URL", embedded_url)
        monkeypatch.delenv("REDIS_URL")
        reset_settings_cache()
        upgrade()
        engine = AutoRemediationEngine()
        with session_scope() as session:
            pack = PolicyManager().effective_pack(session, utcnow())
        engine.scan(pack, list(REGIONS))
        engine.plan(pack, requested_by="scheduler")
        expected = outcome()
        dispose_engines()
    assert expected[0] and expected[1], "the seeded account should give work to compare"

    with scratch_postgres_database() as distributed_url:
        monkeypatch.setenv("DATABASE_URL", distributed_url)
        monkeypatch.setenv("REDIS_URL", RUNTIME_REDIS_URL)
        reset_settings_cache()
        upgrade()
        with workers(tmp_path, 2) as pool:
            app.send_task("finops.start_cycle", kwargs={"slot": "test-cycle"})

            def planned() -> bool:
                with session_scope() as session:
                    cycle = session.scalars(select(PolicyCycleRow)).first()
                    return cycle is not None and "planned" in cycle.details

            try:
                wait_until(planned, 180, "the cycle to be planned")
            except AssertionError:
                print(pool.logs())
                raise
            with session_scope() as session:
                cycle = session.scalars(select(PolicyCycleRow)).one()
                assert (cycle.parts_total, cycle.parts_done, cycle.state) == (4, 4, "planned")
            got = outcome()
            if got != expected:  # say why each differing action ended so
                print("verdicts:", blocked_verdicts(got[1] - expected[1]))
            # the same slot again (beat restarted, schedule file deleted): nothing runs twice
            app.send_task("finops.start_cycle", kwargs={"slot": "test-cycle"})
            wait_until(lambda: broker.llen("scans") == 0, 30, "the second start to be taken")
            with session_scope() as session:
                cycle = session.scalars(select(PolicyCycleRow)).one()
                assert (cycle.parts_done, cycle.state) == (4, "planned")
        dispose_engines()
    assert got == expected


def test_the_scheduler_rebuilds_a_deleted_schedule_file(
    postgres_url: str,
    broker: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The runbook's recovery deletes beat's schedule file: beat starts again from the
    policies (and a cron slot that already ran does not run twice: its cycle row is unique,
    see the test above)."""
    schedule = tmp_path / "celerybeat-schedule"
    monkeypatch.setenv("FINOPS_BEAT_SCHEDULE_PATH", str(schedule))
    reset_settings_cache()
    upgrade()
    for attempt in (1, 2):
        log = tmp_path / f"scheduler-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([FINOPS, "scheduler"], stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda f=log: "beat: Starting" in f.read_text(), 60, "beat to start")
            wait_until(schedule.exists, 30, "the schedule file")
        finally:
            proc.terminate()
            proc.wait(30)
        text = log.read_text()
        assert "schedule entries" in text and "reconcile" in text, text
        assert "reconcile" in json.loads(schedule.read_text())  # one file, at that path
        schedule.unlink()  # as the runbook does: rm -f /tmp/celerybeat-schedule
