"""Age and metrics filters."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from backend.domain.policy import MetricsFilter, Truth
from backend.domain.resources import MetricSpec

from .helpers import NOW, ctx, filters_of, res, truth

T, F, U = Truth.TRUE, Truth.FALSE, Truth.UNKNOWN
CPU_AVG = MetricSpec("AWS/EC2", "CPUUtilization", "Average", 14)
REQUESTS = MetricSpec("AWS/ApplicationELB", "RequestCount", "Sum", 7)


def age(days: float, of: str = "created", **extra: Any) -> list[dict[str, Any]]:
    return [{"type": "age", "days": days, "of": of, **extra}]


@pytest.mark.parametrize(
    ("created", "days", "extra", "expected"),
    [
        (NOW - dt.timedelta(days=31), 30, {}, T),
        (NOW - dt.timedelta(days=29), 30, {}, F),
        (NOW - dt.timedelta(days=30), 30, {}, F),  # older than: strictly
        (NOW - dt.timedelta(days=30), 30, {"op": "ge"}, T),
        (NOW - dt.timedelta(days=2), 30, {"op": "lt"}, T),  # younger than
        (NOW + dt.timedelta(days=1), 0, {}, F),  # clock skew: created in the future
    ],
)
def test_age_of_creation(
    created: dt.datetime, days: float, extra: dict[str, Any], expected: Truth
) -> None:
    assert truth(age(days, **extra), res(created_at=created)) is expected


def test_age_is_time_zone_aware() -> None:
    # 2024-05-04 23:30 in Tokyo is 14:30 UTC: 2.5 hours short of 30 days before NOW
    tokyo = dt.datetime(2024, 5, 4, 23, 30, tzinfo=ZoneInfo("Asia/Tokyo"))
    evidence: dict[str, Any] = {}
    tree = filters_of(age(30))
    assert tree.evaluate(res(created_at=tokyo), ctx(), evidence) is F
    assert evidence["age.created.days"] == pytest.approx(29.896, abs=0.001)
    # the same instant read against a clock in New York gives the same age
    new_york_now = NOW.astimezone(ZoneInfo("America/New_York"))
    assert tree.evaluate(res(created_at=tokyo), ctx(now=new_york_now)) is F
    assert filters_of(age(29.8)).evaluate(res(created_at=tokyo), ctx()) is T


def test_naive_timestamps_are_utc() -> None:
    naive = (NOW - dt.timedelta(days=31)).replace(tzinfo=None)
    assert truth(age(30), res(created_at=naive)) is T


def test_age_of_state_change() -> None:
    stopped = res(
        state="stopped",
        created_at=NOW - dt.timedelta(days=400),
        state_changed_at=NOW - dt.timedelta(days=3),
    )
    assert truth(age(30, "state-changed"), stopped) is F
    assert truth(age(30, "created"), stopped) is T


def test_missing_time_is_unknown_with_evidence() -> None:
    evidence: dict[str, Any] = {}
    assert filters_of(age(1, "state-changed")).evaluate(res(), ctx(), evidence) is U
    assert evidence == {
        "age.state-changed.days": None,
        "age.state-changed.why": "no state-changed time recorded",
    }
    # negated it is still UNKNOWN: an undated resource is not "younger than 30 days" either,
    # so `not: [age lt 30]` must not select it as old
    assert truth([{"not": age(30, "state-changed", op="lt")}], res()) is U
    assert truth([{"not": age(1)}], res()) is U


def test_evaluation_context_needs_an_aware_clock() -> None:
    with pytest.raises(ValueError, match="aware"):
        ctx(now=NOW.replace(tzinfo=None))


IDLE = [{"type": "metrics", "name": "CPUUtilization", "statistic": "Average", "days": 14,
         "op": "lt", "value": 5}]  # fmt: skip
ALB_IDLE = [{"type": "metrics", "name": "RequestCount", "statistics": "Sum", "days": 7,
             "op": "less-than", "value": 100, "missing-value": 0}]  # fmt: skip


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({}, U),  # not fetched yet
        ({("i-1", CPU_AVG): 2.0}, T),
        ({("i-1", CPU_AVG): 5.0}, F),
        ({("i-1", CPU_AVG): 80.0}, F),
        ({("i-1", CPU_AVG): None}, F),  # no datapoints and no missing-value
        ({("i-1", CPU_AVG): float("nan")}, F),
        ({("i-2", CPU_AVG): 2.0}, U),  # another resource's value
        ({("i-1", MetricSpec("AWS/EC2", "CPUUtilization", "Average", 7)): 2.0}, U),
    ],
)
def test_metric_values(metrics: Any, expected: Truth) -> None:
    assert truth(IDLE, res(), ctx(metrics)) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, T), (99.0, T), (100.0, F), (0.0, T)],
)
def test_missing_value(value: float | None, expected: Truth) -> None:
    lb = res("elb", "arn:aws:elasticloadbalancing:us-east-1:1:loadbalancer/app/a/1", "active")
    evidence: dict[str, Any] = {}
    tree = filters_of(ALB_IDLE, "elb")
    assert tree.evaluate(lb, ctx({(lb.resource_id, REQUESTS): value}), evidence) is expected
    key = "metric.RequestCount.Sum.7d"
    assert evidence[key] == (0.0 if value is None else value)
    assert evidence.get(f"{key}.missing-value", False) is (value is None)


def test_no_datapoints_evidence() -> None:
    evidence: dict[str, Any] = {}
    filters_of(IDLE).evaluate(res(), ctx({("i-1", CPU_AVG): None}), evidence)
    assert evidence == {
        "metric.CPUUtilization.Average.14d": None,
        "metric.CPUUtilization.Average.14d.why": "no datapoints",
    }


@pytest.mark.parametrize(
    ("op", "expected"),
    [("lt", F), ("le", T), ("gt", F), ("ge", T), ("eq", T), ("ne", F), ("gte", T), ("lte", T)],
)
def test_metric_operators(op: str, expected: Truth) -> None:
    spec = [{**IDLE[0], "op": op}]
    assert truth(spec, res(), ctx({("i-1", CPU_AVG): 5.0})) is expected


def test_metrics_filter_fields() -> None:
    (only,) = filters_of(ALB_IDLE, "elb").children()
    assert only == MetricsFilter(REQUESTS, "lt", 100.0, 0.0)
    (only,) = filters_of([{"type": "metrics", "name": "CPUUtilization", "value": 5}]).children()
    assert only == MetricsFilter(CPU_AVG, "lt", 5.0)  # Custodian's defaults: Average, 14, lt


def test_period_equal_to_the_window_is_accepted() -> None:
    (only,) = filters_of([{**IDLE[0], "period": 14 * 86400}]).children()
    assert isinstance(only, MetricsFilter)
    assert only.spec == CPU_AVG
