"""Policies as values: what to select, what to do, how carefully, and when."""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from croniter import CroniterBadDateError, croniter

from backend.domain.policy.actions import ActionSpec, iam_permissions_for
from backend.domain.policy.filters import Filter
from backend.domain.policy.measures import MetricsFilter
from backend.domain.resources import MetricSpec, ResourceKind

__all__ = [
    "ActionSpec",
    "Limits",
    "Mode",
    "Notice",
    "Policy",
    "PolicyPack",
    "Risk",
    "Rollback",
    "Schedule",
]


class Mode(StrEnum):
    REPORT = "report"  # list what matches; change nothing
    APPROVAL = "approval"  # each change waits for a person
    AUTO = "auto"  # change after the notice period; only for reversible actions


class Risk(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


CRON_FIELDS = (
    ("minute", "0-59"), ("hour", "0-23"), ("day-of-month", "1-31"), ("month", "1-12"),
    ("day-of-week", "0-7 or SUN-SAT"),
)  # fmt: skip


@functools.cache
def known_zones() -> frozenset[str]:
    """IANA names only. ZoneInfo also opens any file under the tz directory: `localtime`
    (this host's zone, so a pack would mean different hours on different machines) and
    `posixrules` are files, not zone names, and some systems list `localtime` too."""
    return frozenset(zoneinfo.available_timezones() - {"localtime", "posixrules"} | {"UTC"})


def _cron_problem(cron: str) -> str:
    fields = cron.split()
    if len(fields) == 5:
        # croniter only says "out of range": try each field alone to name the bad one.
        for i, ((name, allowed), value) in enumerate(zip(CRON_FIELDS, fields, strict=True)):
            probe = ["*"] * 5
            probe[i] = value
            if not croniter.is_valid(" ".join(probe)):
                return (
                    f"bad cron expression {cron!r}: the {name} field {value!r} is not valid; "
                    f"expected {allowed}"
                )
    return (
        f"bad cron expression {cron!r}; expected five fields: "
        "minute hour day-of-month month day-of-week, e.g. '0 19 * * 1-5'"
    )


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a policy runs: a five-field cron expression read in an IANA time zone, so that
    `0 19 * * 1-5` stays 19:00 local across daylight saving changes."""

    cron: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        fields = self.cron.split()
        if len(fields) != 5 or not croniter.is_valid(self.cron):
            raise ValueError(_cron_problem(self.cron))
        try:
            # Valid fields can still name no moment (31 February): beat would retry it
            # every five minutes, forever.
            croniter(self.cron, dt.datetime(2000, 1, 1)).get_next(dt.datetime)
        except CroniterBadDateError:
            raise ValueError(f"bad cron expression {self.cron!r}: it never fires") from None
        if self.timezone not in known_zones():
            raise ValueError(
                f"unknown time zone {self.timezone!r}; expected an IANA name "
                "such as 'Europe/Paris' or 'UTC'"
            )

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first run strictly after `moment` (aware), in the schedule's zone."""
        if moment.tzinfo is None:
            raise ValueError("moment must be time zone aware")
        result: dt.datetime = croniter(self.cron, moment.astimezone(self.zone)).get_next(
            dt.datetime
        )
        return result

    def latest_at_or_before(self, moment: dt.datetime) -> dt.datetime:
        """The run time at or before `moment` (aware): the slot a run at `moment` belongs to."""
        if moment.tzinfo is None:
            raise ValueError("moment must be time zone aware")
        local = moment.astimezone(self.zone)
        if croniter.match(self.cron, local.replace(second=0, microsecond=0)):
            return local.replace(second=0, microsecond=0)
        result: dt.datetime = croniter(self.cron, local).get_prev(dt.datetime)
        return result

    @property
    def repeats_in_repeated_hour(self) -> bool:
        """Whether the job runs again in the hour autumn repeats. As cron does (Vixie cron,
        cronie): a job whose minute or hour field starts with `*` (`*/15 * * * *`,
        `0 * * * *`) runs at every real instant; a job at fixed times (`30 2 * * *`) once."""
        minute, hour = self.cron.split()[:2]
        return minute.startswith("*") or hour.startswith("*")

    def slot(self, moment: dt.datetime) -> str:
        """The name of the run `moment` belongs to: the local wall-clock time and the zone.
        In the hour that autumn repeats, 01:30 comes twice (two offsets): one slot for a
        fixed-time job, which cron runs once; for a job that runs every few minutes or
        every hour, the second pass is named with its offset, so its runs are not refused
        as ones that already ran. Names outside that hour are unchanged."""
        fired = self.latest_at_or_before(moment)
        wall = fired.replace(tzinfo=None, fold=0)
        repeated = fired.replace(fold=0).utcoffset() != fired.replace(fold=1).utcoffset()
        if repeated and fired.fold == 1 and self.repeats_in_repeated_hour:
            return f"{wall.isoformat()}{fired.isoformat()[-6:]} {self.timezone}"
        return f"{wall.isoformat()} {self.timezone}"

    def is_due(self, last_run: dt.datetime, now: dt.datetime) -> bool:
        """Whether a run fell due after `last_run`, up to and including `now`."""
        return self.next_after(last_run) <= now


@dataclass(frozen=True, slots=True)
class Notice:
    """Tell the owner before acting, and wait `grace_days` for an objection."""

    notify: bool = False
    grace_days: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.grace_days <= 90:
            raise ValueError(f"'grace-days' must be between 0 and 90, got {self.grace_days}")


@dataclass(frozen=True, slots=True)
class Rollback:
    """How long after acting a sign that the resource is needed undoes the action, and which
    CloudWatch alarms count as such a sign. `window_days` None: the configured default."""

    window_days: float | None = None
    alarms: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.window_days is not None and not 0 <= self.window_days <= 365:
            raise ValueError(f"'window-days' must be between 0 and 365, got {self.window_days}")


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on one run, so that a wrong filter cannot sweep a whole fleet."""

    max_actions_per_run: int | None = None
    max_percent_of_fleet: float | None = None

    def __post_init__(self) -> None:
        if self.max_actions_per_run is not None and not 1 <= self.max_actions_per_run <= 100_000:
            raise ValueError(
                "'max-actions-per-run' must be between 1 and 100000, got "
                f"{self.max_actions_per_run}"
            )
        if self.max_percent_of_fleet is not None and not 0 < self.max_percent_of_fleet <= 100:
            raise ValueError(
                "'max-percent-of-fleet' must be above 0 and at most 100, got "
                f"{self.max_percent_of_fleet:g}"
            )


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    kind: ResourceKind
    filters: Filter
    action: ActionSpec
    mode: Mode = Mode.REPORT
    schedule: Schedule | None = None
    notice: Notice = field(default_factory=Notice)
    limits: Limits = field(default_factory=Limits)
    rollback: Rollback = field(default_factory=Rollback)
    risk: Risk = Risk.MEDIUM
    description: str = ""
    enabled: bool = True
    source_file: str | None = None
    source_line: int | None = None

    @property
    def metric_specs(self) -> frozenset[MetricSpec]:
        return frozenset(f.spec for f in self.filters.walk() if isinstance(f, MetricsFilter))

    @property
    def source(self) -> str:
        return f"{self.source_file or '<memory>'}:{self.source_line or 0}"


@dataclass(frozen=True, slots=True)
class PolicyPack:
    policies: tuple[Policy, ...] = ()
    by_name: Mapping[str, Policy] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        names: dict[str, Policy] = {}
        for policy in self.policies:
            if policy.name in names:
                raise ValueError(f"duplicate policy name {policy.name!r}")
            names[policy.name] = policy
        object.__setattr__(self, "by_name", MappingProxyType(names))

    def __iter__(self) -> Iterator[Policy]:
        return iter(self.policies)

    def __len__(self) -> int:
        return len(self.policies)

    def enabled(self) -> tuple[Policy, ...]:
        return tuple(p for p in self.policies if p.enabled)

    def for_kind(self, kind: ResourceKind) -> tuple[Policy, ...]:
        return tuple(p for p in self.policies if p.kind is kind)

    def iam_permissions(self, *, include_undo: bool = True) -> list[str]:
        """IAM actions the enabled policies' actions (and their undo steps) call."""
        uses = [(p.kind, p.action) for p in self.enabled() if p.mode is not Mode.REPORT]
        return iam_permissions_for(uses, include_undo=include_undo)
