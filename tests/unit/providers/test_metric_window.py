"""One datapoint per series: the period covers the whole window as CloudWatch rounds it.

CloudWatch rounds StartTime down (to the minute for a start within 15 days, to 5 minutes
within 63, to the hour beyond) and answers one datapoint per period from there. With the
period exactly the window, a start rounded down leaves a second period of under a minute at
the end; its datapoint, averaged with the window's, would count a few minutes as much as
the two weeks before them.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest

from backend.domain.resources import MetricSpec, Resource, ResourceKind
from backend.providers.aws.metrics import fetch_metric_summaries


def rounded_start(start: dt.datetime, now: dt.datetime) -> dt.datetime:
    """CloudWatch's rounding of StartTime, by how long ago it is."""
    age = now - start
    step = 60 if age < dt.timedelta(days=15) else 300 if age < dt.timedelta(days=63) else 3600
    seconds = int(start.timestamp())
    return dt.datetime.fromtimestamp(seconds - seconds % step, dt.UTC)


class CloudWatch:
    """The window's periods as CloudWatch counts them: the first holds the steady value of
    the window, any later one a burst in its last minute."""

    def __init__(self, now: dt.datetime, steady: float, burst: float) -> None:
        self.now, self.steady, self.burst = now, steady, burst

    def get_metric_data(self, **kwargs: Any) -> dict[str, Any]:
        start = rounded_start(kwargs["StartTime"], self.now)
        results = []
        for query in kwargs["MetricDataQueries"]:
            period = query["MetricStat"]["Period"]
            assert period % 60 == 0, "a period is a whole number of minutes"
            span = (kwargs["EndTime"] - start).total_seconds()
            periods = math.ceil(span / period)
            values = [self.steady] + [self.burst] * (periods - 1)
            results.append({"Id": query["Id"], "Values": values, "StatusCode": "Complete"})
        return {"MetricDataResults": results}


INSTANCE = Resource(
    kind=ResourceKind.EC2_INSTANCE,
    resource_id="i-0123456789abcdef0",
    account_id="111111111111",
    region="us-east-1",
    state="running",
)


@pytest.mark.parametrize("days", [7, 14, 30, 90])
@pytest.mark.parametrize("second", [0, 1, 34, 59])
def test_the_window_is_one_period_whatever_the_second_it_ends(days: int, second: int) -> None:
    now = dt.datetime(2026, 11, 30, 12, 32, second, 250_000, tzinfo=dt.UTC)
    spec = MetricSpec("AWS/EC2", "CPUUtilization", "Average", days)
    cloudwatch = CloudWatch(now, steady=2.0, burst=95.0)
    summaries = fetch_metric_summaries(cloudwatch, [(INSTANCE, spec)], now=now)
    assert summaries == {(INSTANCE.resource_id, spec): 2.0}
