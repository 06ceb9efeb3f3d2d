"""Beat's schedule from the policies: one entry per (cron, time zone), read in that zone."""

from __future__ import annotations

import datetime as dt
import json
import pickle
from pathlib import Path

from celery import Celery

from backend.config import Settings
from backend.domain.policy.loader import load_text
from backend.runtime.beat import FileScheduler, PolicyCron, beat_schedule

PACK = """
policies:
  - {name: a, resource: ec2, action: stop, schedule: {cron: "0 19 * * 1-5", timezone: Europe/Paris}}
  - {name: b, resource: ec2, action: stop, schedule: {cron: "0 19 * * 1-5", timezone: Europe/Paris}}
  - {name: c, resource: ec2, action: stop, schedule: {cron: "*/15 * * * *"}}
  - {name: d, resource: ec2, action: stop, enabled: false, schedule: {cron: "0 3 * * *"}}
  - {name: e, resource: ec2, action: stop}
"""


class FixedCron(PolicyCron):
    moment = dt.datetime(2026, 11, 27, 18, 0, 30, tzinfo=dt.UTC)  # Friday 19:00:30 in Paris

    def now(self) -> dt.datetime:
        return self.moment


def test_one_entry_per_schedule_for_enabled_policies_plus_the_reconciler() -> None:
    entries = beat_schedule(load_text(PACK, "p.yml"), Settings(dispatch_interval_seconds=20))
    cycles = {k: v["kwargs"]["policies"] for k, v in entries.items() if k != "reconcile"}
    assert cycles == {
        "cycle 0 19 * * 1-5 Europe/Paris": ["a", "b"],
        "cycle */15 * * * * UTC": ["c"],
    }
    assert entries["reconcile"]["task"] == "finops.reconcile"
    assert entries["reconcile"]["schedule"].run_every == dt.timedelta(seconds=20)


def test_due_in_the_policy_time_zone() -> None:
    cron = FixedCron("0 19 * * 1-5", "Europe/Paris")
    before = dt.datetime(2026, 11, 27, 17, 59, tzinfo=dt.UTC)
    assert cron.is_due(before).is_due  # 19:00 Paris = 18:00 UTC fell due since
    just_ran = dt.datetime(2026, 11, 27, 18, 0, 5, tzinfo=dt.UTC)
    state = cron.is_due(just_ran)
    assert not state.is_due
    assert 3 * 86400 - 60 < state.next <= 3 * 86400  # next: Monday 19:00 Paris
    naive = dt.datetime(2026, 11, 27, 17, 59)  # celery may hand back naive UTC
    assert cron.is_due(naive).is_due


def test_survives_the_schedule_file() -> None:
    cron = PolicyCron("*/15 * * * *", "UTC")
    again = pickle.loads(pickle.dumps(cron))
    assert again == cron and isinstance(again, PolicyCron)
    assert again != PolicyCron("*/15 * * * *", "Europe/Paris")


def test_file_scheduler_keeps_one_file_and_survives_its_loss(tmp_path: Path) -> None:
    app = Celery("t", set_as_current=False)
    app.conf.beat_schedule = {
        "tick": {"task": "finops.reconcile", "schedule": dt.timedelta(seconds=30)}
    }
    path = tmp_path / "celerybeat-schedule"
    first = FileScheduler(app=app, schedule_filename=str(path), lazy=False)
    ran = dt.datetime(2026, 11, 29, 4, 0, tzinfo=dt.UTC)
    first.schedule["tick"].last_run_at = ran
    first.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["celerybeat-schedule"]
    again = FileScheduler(app=app, schedule_filename=str(path), lazy=False)
    assert again.schedule["tick"].last_run_at == ran  # remembered
    path.write_text("{not json")
    fresh = FileScheduler(app=app, schedule_filename=str(path), lazy=False)
    assert fresh.schedule["tick"].last_run_at != ran  # unreadable: starts afresh, no crash
    path.unlink()
    assert "tick" in FileScheduler(app=app, schedule_filename=str(path), lazy=False).schedule


def test_a_send_carries_the_fire_time_it_is_for(tmp_path: Path) -> None:
    """Beat down from Thursday to Monday 08:00 (Paris): the catch-up send names Friday's
    19:00 run (so the task can see it is late), not a slot it derives from its own clock."""
    from celery.beat import BeatLazyFunc

    entries = beat_schedule(load_text(PACK, "p.yml"), Settings())
    name = "cycle 0 19 * * 1-5 Europe/Paris"
    app = Celery("t", set_as_current=False)
    app.conf.beat_schedule = entries
    path = tmp_path / "celerybeat-schedule"
    path.write_text(json.dumps({name: "2026-03-05T18:00:01+00:00"}))  # Thursday 19:00 Paris
    entry = FileScheduler(app=app, schedule_filename=str(path), lazy=False).schedule[name]
    entry.schedule.nowfun = lambda: dt.datetime(2026, 3, 9, 7, 0, tzinfo=dt.UTC)
    assert entry.is_due().is_due
    fired = entry.kwargs["fired_at"]
    assert isinstance(fired, BeatLazyFunc)  # evaluated as beat sends the task
    assert fired() == "2026-03-06T19:00:00+01:00"
