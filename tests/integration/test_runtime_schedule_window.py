"""A scheduled cycle that starts too late (beat restarted on Monday morning) runs nothing:
the start task takes the fire time beat sent, skips and audits a run past its window, and
the planner refuses a late cycle's scheduled policies anyway."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from backend.config import reset_settings_cache
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import ActionRow, AuditEventRow, PolicyCycleRow
from backend.core.types import utcnow
from backend.domain.policy.model import Schedule
from backend.runtime import cycles, services, tasks
from tests.integration.test_schedule_window import seed

PACK = """
policies:
  - name: offhours
    resource: ec2
    filters: ["State.Name": running, "tag:finops:schedule": office-hours]
    action: stop
    mode: auto
    schedule: {cron: "%s", timezone: "%s"}
"""


class Worker:
    """This process as a worker (no broker): the scan parts it would queue are recorded."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path, self.monkeypatch = tmp_path, monkeypatch
        self.queued: list[tuple[object, ...]] = []
        monkeypatch.setattr(
            tasks.scan_part, "apply_async", lambda args, **_: self.queued.append(args)
        )

    def use(self, cron: str, zone: str) -> None:
        path = self.tmp_path / "pack.yml"
        path.write_text(PACK % (cron, zone))
        self.monkeypatch.setenv("FINOPS_POLICY_PATHS", str(path))
        reset_settings_cache()
        services.reset()
        upgrade()


@pytest.fixture
def worker(
    broker: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Worker]:
    yield Worker(tmp_path, monkeypatch)
    services.reset()  # no other test may get this process's services with this pack


def start(cron: str, zone: str, fired: dt.datetime) -> int | None:
    result: int | None = tasks.start_cycle(
        policies=["offhours"], cron=cron, timezone=zone, fired_at=fired.isoformat()
    )
    return result


def test_a_late_send_opens_no_cycle_and_is_audited(worker: Worker) -> None:
    cron, zone = "0 19 * * 1-5", "Europe/Paris"
    worker.use(cron, zone)
    schedule = Schedule(cron, zone)
    last_week = schedule.latest_at_or_before(utcnow() - dt.timedelta(days=3))
    assert start(cron, zone, last_week) is None
    assert worker.queued == []
    with session_scope() as session:
        assert session.scalars(select(PolicyCycleRow)).all() == []
        event = session.scalars(
            select(AuditEventRow).where(AuditEventRow.actor == "schedule")
        ).one()
        assert (event.subject_type, event.outcome) == ("cycle", "blocked")
        assert event.details["slot"] == schedule.slot(last_week)
        assert event.details["summary"].startswith("schedule-window: ")


def test_the_slot_is_the_fire_time_beat_sent(worker: Worker) -> None:
    """Taken ten minutes late (a busy queue), the task names the run it was sent for."""
    cron, zone = "*/5 * * * *", "UTC"
    worker.use(cron, zone)
    fired = Schedule(cron, zone).latest_at_or_before(utcnow() - dt.timedelta(minutes=10))
    cycle_id = start(cron, zone, fired)
    assert cycle_id is not None and len(worker.queued) == 1
    with session_scope() as session:
        cycle = session.get(PolicyCycleRow, cycle_id)
        assert cycle is not None and cycle.slot == Schedule(cron, zone).slot(fired)
    assert start(cron, zone, fired) is None  # the same run again: refused by its cycle


def test_a_late_cycle_plans_nothing_for_its_scheduled_policy(
    worker: Worker,
) -> None:
    """Without a fire time (a message from an older beat, or a cycle that opened in time but
    whose scan outlasted the window), the planner still refuses the scheduled policy."""
    cron, zone = "0 3 1 1 *", "UTC"  # 1 January 03:00: far from now, whenever this runs
    worker.use(cron, zone)
    seed(utcnow() - dt.timedelta(days=1))
    schedule = Schedule(cron, zone)
    with session_scope() as session:
        cycle_id = cycles.open_cycle(
            session, ["offhours"], schedule.slot(utcnow()), [cycles.Part("", "us-east-1")], utcnow()
        )
    assert cycle_id is not None
    assert cycles.plan_cycle(services.services(), cycle_id) == 0
    with session_scope() as session:
        assert session.scalars(select(ActionRow)).all() == []
        cycle = session.get(PolicyCycleRow, cycle_id)
        assert cycle is not None
        assert "outside its run window" in cycle.details["outside_window"]["offhours"]
