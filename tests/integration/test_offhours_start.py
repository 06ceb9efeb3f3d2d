"""Off-hours both ways: the evening's stop and the morning's start, both finops's own. The
rollback watcher must not read the morning start as someone needing the instance (it
recorded every nightly stop as rolled back); a start by anyone else still counts."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from backend.config import get_settings, reset_settings_cache
from backend.core.action_engine import ActionEngine, RunReport
from backend.core.action_planner import ActionPlanner
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import ActionRow
from backend.core.rollback_triggers import NEEDED_AGAIN, RollbackTriggers
from backend.core.scan_service import ScanService
from backend.core.types import utcnow
from backend.domain.policy import load_text
from backend.domain.policy.model import PolicyPack, Schedule
from tests.integration.aws_fleet import client, launch

PACK = """
policies:
  - name: offhours-stop
    resource: ec2
    filters: ["State.Name": running, "tag:finops:schedule": office-hours]
    action: stop
    mode: auto
    schedule: {cron: "0 19 * * 1-5", timezone: Europe/Paris}
    rollback: {window-days: 14}
  - name: offhours-start
    resource: ec2
    filters: ["State.Name": stopped, "tag:finops:schedule": office-hours]
    action: start
    mode: auto
    schedule: {cron: "0 7 * * 1-5", timezone: Europe/Paris}
"""


def cycle(pack: PolicyPack, name: str, at: dt.datetime) -> RunReport:
    only = PolicyPack(tuple(p for p in pack if p.name == name))
    ScanService(get_settings()).run(pack=only, regions=["us-east-1"])
    with session_scope() as session:
        ActionPlanner(clock=lambda: at).plan(session, only, requested_by="scheduler")
    return ActionEngine(pack=only, clock=lambda: at).execute(dry_run=False)


def states() -> dict[str, str]:
    with session_scope() as session:
        return {r.policy_name: r.state for r in session.scalars(select(ActionRow))}


def test_the_morning_start_is_not_a_rollback_of_the_stop(
    moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "100")
    reset_settings_cache()
    ec2 = client(moto_url, "ec2", "us-east-1")
    iid = launch(ec2, {"finops:schedule": "office-hours"})
    upgrade()
    pack = load_text(PACK, "p.yml")
    # the last evening run before now, and the next morning run after it (in their windows)
    evening = Schedule("0 19 * * 1-5", "Europe/Paris").latest_at_or_before(utcnow())
    morning = Schedule("0 7 * * 1-5", "Europe/Paris").next_after(evening)
    evening, morning = evening + dt.timedelta(minutes=2), morning + dt.timedelta(minutes=2)
    assert [o.result for o in cycle(pack, "offhours-stop", evening).outcomes] == ["succeeded"]
    assert [o.result for o in cycle(pack, "offhours-start", morning).outcomes] == ["succeeded"]
    watcher = RollbackTriggers(pack=pack, clock=lambda: morning + dt.timedelta(minutes=5))
    assert [r for r in watcher.check() if r.trigger == NEEDED_AGAIN] == []
    assert states() == {"offhours-stop": "succeeded", "offhours-start": "succeeded"}

    # that night's stop, then someone starts the instance by hand: that one is a rollback
    night = Schedule("0 19 * * 1-5", "Europe/Paris").next_after(morning)
    night += dt.timedelta(minutes=2)
    assert [o.result for o in cycle(pack, "offhours-stop", night).outcomes] == ["succeeded"]
    ec2.start_instances(InstanceIds=[iid])
    late = RollbackTriggers(pack=pack, clock=lambda: night + dt.timedelta(minutes=5)).check()
    assert [(r.trigger, r.result) for r in late] == [(NEEDED_AGAIN, "rolled_back")]
