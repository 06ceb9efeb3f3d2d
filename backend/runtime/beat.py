"""Beat's schedule, built from the policies each time the scheduler starts.

One entry per distinct (cron, time zone) among the enabled policies, naming its policies; and
the reconciler's tick. The schedule file (settings.beat_schedule_path, /tmp/celerybeat-schedule
in the container) only remembers last run times: deleted, it is rebuilt from the policies, and
a slot that already ran does not run again because its cycle row in PostgreSQL is unique.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import structlog
from celery.beat import BeatLazyFunc, Scheduler
from celery.schedules import BaseSchedule, schedstate, schedule

from backend.config import Settings
from backend.core.types import utcnow
from backend.domain.policy.model import PolicyPack, Schedule

log = structlog.get_logger(__name__)


class PolicyCron(BaseSchedule):
    """A policy's cron expression, read in its own time zone (croniter, as the planner does)."""

    def __init__(self, cron: str, timezone: str = "UTC", **kwargs: Any) -> None:
        kwargs.setdefault("nowfun", utcnow)  # the database's clock, as the workers read it
        super().__init__(**kwargs)
        self.cron = Schedule(cron, timezone)

    def _aware(self, moment: dt.datetime) -> dt.datetime:
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)

    def remaining_estimate(self, last_run_at: dt.datetime) -> dt.timedelta:
        now = self._aware(self.now())
        return self.cron.next_after(self._aware(last_run_at)) - now

    def fired_at(self) -> str:
        """The fire time a send now is for (the latest at or before now, on beat's clock),
        so the task names its slot and judges its lateness from it, not from its own clock:
        a beat that restarts on Monday morning sends Friday evening's run, late."""
        return self.cron.latest_at_or_before(self._aware(self.now())).isoformat()

    def is_due(self, last_run_at: dt.datetime) -> schedstate:
        now = self._aware(self.now())
        due = self.cron.next_after(self._aware(last_run_at)) <= now
        following = self.cron.next_after(now) - now
        return schedstate(due, max(following.total_seconds(), 1.0))

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.cron.cron, self.cron.timezone))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PolicyCron) and other.cron == self.cron

    def __hash__(self) -> int:
        return hash(self.cron)

    def __repr__(self) -> str:
        return f"<PolicyCron {self.cron.cron} {self.cron.timezone}>"


def scheduled_entries(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat's entries from the policy files, not from the database's state of them: a
    policy paused when beat starts must run again when its pause ends, without a restart.
    Each cycle asks the database when it starts (start_cycle skips a held policy)."""
    from backend.core.policy_manager import PolicyManager

    return beat_schedule(PolicyManager().load(), settings)


def beat_schedule(pack: PolicyPack, settings: Settings) -> dict[str, dict[str, Any]]:
    groups: dict[Schedule, list[str]] = {}
    for policy in pack.enabled():
        if policy.schedule is not None:
            groups.setdefault(policy.schedule, []).append(policy.name)
    entries: dict[str, dict[str, Any]] = {}
    for s, names in sorted(groups.items(), key=lambda item: (item[0].cron, item[0].timezone)):
        cron = PolicyCron(s.cron, s.timezone)
        entries[f"cycle {s.cron} {s.timezone}"] = {
            "task": "finops.start_cycle",
            "schedule": cron,
            "kwargs": {
                "policies": sorted(names),
                "cron": s.cron,
                "timezone": s.timezone,
                "fired_at": BeatLazyFunc(cron.fired_at),  # evaluated as beat sends it
            },
        }
    entries["reconcile"] = {
        "task": "finops.reconcile",
        "schedule": schedule(dt.timedelta(seconds=settings.dispatch_interval_seconds)),
    }
    return entries


class FileScheduler(Scheduler):
    """Beat's memory of each entry's last run, in exactly one JSON file at the configured path.

    Celery's own PersistentScheduler keeps a shelve whose files get backend-dependent names
    (`.db`, or `.dat`/`.dir`/`.bak`), so the runbook's `rm -f /tmp/celerybeat-schedule` could
    miss them. Here the path is the file. A missing or unreadable file means no memory: every
    entry waits for its next time, and a slot that already ran is refused by its unique cycle.
    """

    def __init__(self, *args: Any, schedule_filename: str | None = None, **kwargs: Any) -> None:
        self.path = Path(schedule_filename or "celerybeat-schedule")
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        self.merge_inplace(self.app.conf.beat_schedule)
        for name, last in self._saved().items():
            entry = self.schedule.get(name)
            if entry is not None:
                entry.last_run_at = last
        self.sync()

    def _saved(self) -> dict[str, dt.datetime]:
        try:
            raw = json.loads(self.path.read_text())
            return {k: dt.datetime.fromisoformat(v) for k, v in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            log.warning("beat schedule file unreadable: starting afresh", error=str(exc))
            return {}

    def sync(self) -> None:
        data = {
            name: entry.last_run_at.isoformat()
            for name, entry in self.schedule.items()
            if entry.last_run_at is not None
        }
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(temporary, self.path)  # never a half-written file

    def close(self) -> None:
        self.sync()
