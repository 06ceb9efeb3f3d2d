"""Schedules (in time zones), notice, limits and the pack."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from backend.domain.policy import (
    ActionSpec,
    And,
    Limits,
    Mode,
    Notice,
    Policy,
    PolicyPack,
    Schedule,
)
from backend.domain.policy.actions import BackupParams
from backend.domain.resources import ResourceKind

PARIS = ZoneInfo("Europe/Paris")
UTC = dt.UTC


def test_schedule_runs_at_local_time_across_daylight_saving() -> None:
    weekdays_19 = Schedule("0 19 * * 1-5", "Europe/Paris")
    # Friday 29 March 2024, 20:00 in Paris (winter time) -> Monday 1 April, 19:00 summer time
    after = dt.datetime(2024, 3, 29, 19, 0, tzinfo=UTC)
    nxt = weekdays_19.next_after(after)
    assert nxt == dt.datetime(2024, 4, 1, 19, 0, tzinfo=PARIS)
    assert nxt.astimezone(UTC) == dt.datetime(2024, 4, 1, 17, 0, tzinfo=UTC)
    # in winter the same 19:00 is 18:00 UTC
    winter = weekdays_19.next_after(dt.datetime(2024, 1, 8, 12, 0, tzinfo=UTC))
    assert winter.astimezone(UTC) == dt.datetime(2024, 1, 8, 18, 0, tzinfo=UTC)


def test_schedule_due() -> None:
    schedule = Schedule("0 19 * * 1-5", "America/New_York")
    last = dt.datetime(2024, 6, 3, 22, 0, tzinfo=UTC)  # Monday 18:00 in New York
    assert not schedule.is_due(last, dt.datetime(2024, 6, 3, 22, 59, tzinfo=UTC))
    assert schedule.is_due(last, dt.datetime(2024, 6, 3, 23, 0, tzinfo=UTC))
    assert Schedule("*/15 * * * *").timezone == "UTC"
    with pytest.raises(ValueError, match="aware"):
        schedule.next_after(dt.datetime(2024, 1, 1))


@pytest.mark.parametrize(
    ("cron", "zone", "message"),
    [
        ("0 25 * * *", "UTC", "the hour field '25' is not valid; expected 0-23"),
        ("61 19 * * *", "UTC", "the minute field '61' is not valid; expected 0-59"),
        ("0 19 * * 8", "UTC", "the day-of-week field '8' is not valid; expected 0-7 or SUN-SAT"),
        ("0 19 32 * *", "UTC", "the day-of-month field '32' is not valid; expected 1-31"),
        ("0 19 * 1-13 *", "UTC", "the month field '1-13' is not valid; expected 1-12"),
        ("0 19 * * 1-5 2024", "UTC", "five fields"),
        ("every day", "UTC", "bad cron"),
        ("0 0 31 2 *", "UTC", "it never fires"),  # valid fields, no 31 February
        ("0 19 * * 1-5", "Mars/Olympus", "unknown time zone"),
        ("0 19 * * 1-5", "../etc/passwd", "unknown time zone"),
        # files under the tz directory, not zone names: localtime is this host's own zone
        ("0 19 * * 1-5", "localtime", "unknown time zone 'localtime'"),
        ("0 19 * * 1-5", "posixrules", "unknown time zone 'posixrules'"),
    ],
)
def test_schedule_validation(cron: str, zone: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule(cron, zone)


def test_notice_and_limits_ranges() -> None:
    assert Notice(True, 7).grace_days == 7
    with pytest.raises(ValueError, match="grace-days"):
        Notice(True, 91)
    with pytest.raises(ValueError, match="max-actions-per-run"):
        Limits(0)
    with pytest.raises(ValueError, match="max-percent-of-fleet"):
        Limits(None, 0)
    with pytest.raises(ValueError, match="max-percent-of-fleet"):
        Limits(None, 100.5)
    assert Limits(1, 100).max_percent_of_fleet == 100


def make(name: str, kind: ResourceKind, action: ActionSpec, **kw: object) -> Policy:
    return Policy(name, kind, And(()), action, **kw)  # type: ignore[arg-type]


def test_pack() -> None:
    delete = ActionSpec("delete", BackupParams())
    a = make("a", ResourceKind.EBS_VOLUME, delete, mode=Mode.APPROVAL)
    b = make("b", ResourceKind.EC2_INSTANCE, ActionSpec("stop"), enabled=False)
    c = make("c", ResourceKind.EC2_INSTANCE, ActionSpec("stop"))  # report mode
    pack = PolicyPack((a, b, c))
    assert pack.by_name["b"] is b
    assert list(pack) == [a, b, c]
    assert len(pack) == 3
    assert pack.enabled() == (a, c)
    assert pack.for_kind(ResourceKind.EC2_INSTANCE) == (b, c)
    # report-mode and disabled policies call nothing
    assert pack.iam_permissions(include_undo=False) == [
        "ec2:CreateSnapshot",
        "ec2:CreateTags",
        "ec2:DeleteVolume",
    ]
    with pytest.raises(ValueError, match="duplicate"):
        PolicyPack((a, a))
    assert hash(a) == hash(make("a", ResourceKind.EBS_VOLUME, delete, mode=Mode.APPROVAL))


def test_the_repeated_autumn_hour_is_one_slot() -> None:
    """01:30 comes twice in New York on 2025-11-02 (EDT, then EST): one run, as cron."""
    schedule = Schedule("30 1 * * *", "America/New_York")
    first = schedule.slot(dt.datetime(2025, 11, 2, 5, 30, tzinfo=dt.UTC))  # 01:30 EDT
    second = schedule.slot(dt.datetime(2025, 11, 2, 6, 30, tzinfo=dt.UTC))  # 01:30 EST
    assert first == second == "2025-11-02T01:30:00 America/New_York"
    assert schedule.slot(dt.datetime(2025, 11, 3, 6, 30, tzinfo=dt.UTC)) != first


def test_a_sub_hourly_schedule_runs_through_the_repeated_autumn_hour() -> None:
    """Berlin repeats 02:00-03:00 on 2025-10-26: `*/15` fires eight times in those two real
    hours and each is its own slot (none refused as already run); cron does the same."""
    schedule = Schedule("*/15 * * * *", "Europe/Berlin")
    fires, t = [], dt.datetime(2025, 10, 25, 23, 59, tzinfo=dt.UTC)
    for _ in range(8):
        t = schedule.next_after(t)
        fires.append(t)
    # in UTC, as the runtime's clocks are: a local time plus 2 s would lose its fold
    slots = [schedule.slot(f.astimezone(dt.UTC) + dt.timedelta(seconds=2)) for f in fires]
    assert len(set(slots)) == 8
    assert slots[0] == "2025-10-26T02:00:00 Europe/Berlin"  # first pass: names unchanged
    assert slots[4] == "2025-10-26T02:00:00+01:00 Europe/Berlin"  # second pass: its offset
    # the fire time beat sends (ISO, with its offset) names the same slot in the task
    assert schedule.slot(dt.datetime.fromisoformat(fires[5].isoformat())) == slots[5]
    hourly = Schedule("0 * * * *", "Europe/Berlin")
    at = [dt.datetime(2025, 10, 26, h, 0, 30, tzinfo=dt.UTC) for h in (0, 1)]
    assert hourly.slot(at[0]) != hourly.slot(at[1])  # 02:00 CEST, then 02:00 CET: two runs


def test_a_fixed_time_job_runs_once_in_the_repeated_hour() -> None:
    schedule = Schedule("30 2 * * *", "Europe/Berlin")
    first = schedule.slot(dt.datetime(2025, 10, 26, 0, 30, 5, tzinfo=dt.UTC))  # 02:30 CEST
    second = schedule.slot(dt.datetime(2025, 10, 26, 1, 30, 5, tzinfo=dt.UTC))  # 02:30 CET
    assert first == second == "2025-10-26T02:30:00 Europe/Berlin"
