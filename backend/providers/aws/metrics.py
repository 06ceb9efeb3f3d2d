"""CloudWatch GetMetricData in batches of 500 queries, one per (resource, metric, window)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import structlog

from backend.domain.resources import (
    KIND_METRICS,
    MetricSpec,
    Resource,
    metric_dimension_value,
    metric_namespace,
)
from backend.providers.aws.retry import call

log = structlog.get_logger(__name__)

BATCH = 500  # GetMetricData's limit on queries per call
DAY = 86400
# CloudWatch rounds StartTime down, by up to an hour (a start more than 63 days ago), and
# answers one datapoint per period from there. A period of exactly the window would leave a
# second, short period at its end, whose datapoint _combine would weigh as much as the
# whole window's (an Average of 14 days and one of 40 seconds, halved). An hour more than
# the window: one period, one datapoint, every series. A multiple of 3600, as CloudWatch
# asks of a period for old data.
PERIOD_SLACK = 3600


def _combine(statistic: str, values: Sequence[float]) -> float | None:
    """Fold the datapoints of one window into one number (usually there is exactly one)."""
    if not values:
        return None
    if statistic in ("Sum", "SampleCount"):
        return float(sum(values))
    if statistic == "Maximum":
        return float(max(values))
    if statistic == "Minimum":
        return float(min(values))
    return float(sum(values) / len(values))


def fetch_metric_summaries(
    cloudwatch: Any,
    requests: Iterable[tuple[Resource, MetricSpec]],
    *,
    now: dt.datetime | None = None,
) -> dict[tuple[str, MetricSpec], float | None]:
    """Summaries for (resource, spec) pairs; None where CloudWatch has no datapoints, no
    entry where it could not read the series (unknown, not idle).

    The period is the whole window (PERIOD_SLACK), so CloudWatch does the aggregation and
    answers one datapoint a series.
    """
    end = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    by_days: dict[int, list[tuple[Resource, MetricSpec]]] = {}
    for resource, spec in requests:
        by_days.setdefault(spec.days, []).append((resource, spec))
    out: dict[tuple[str, MetricSpec], float | None] = {}
    for days, pairs in by_days.items():
        for i in range(0, len(pairs), BATCH):
            out.update(_fetch_batch(cloudwatch, pairs[i : i + BATCH], end, days))
    return out


def _fetch_batch(
    cloudwatch: Any, pairs: Sequence[tuple[Resource, MetricSpec]], end: dt.datetime, days: int
) -> dict[tuple[str, MetricSpec], float | None]:
    queries = []
    for n, (resource, spec) in enumerate(pairs):
        dimension = KIND_METRICS[resource.kind][0].dimension
        queries.append(
            {
                "Id": f"q{n}",
                "ReturnData": True,
                "MetricStat": {
                    "Metric": {
                        "Namespace": metric_namespace(resource, spec.namespace),
                        "MetricName": spec.metric,
                        "Dimensions": [
                            {
                                "Name": dimension,
                                "Value": metric_dimension_value(resource, spec.namespace),
                            }
                        ],
                    },
                    "Period": days * DAY + PERIOD_SLACK,
                    "Stat": spec.statistic,
                },
            }
        )
    values: dict[str, list[float]] = {}
    status: dict[str, str] = {}
    messages: list[str] = []
    kwargs: dict[str, Any] = {
        "MetricDataQueries": queries,
        "StartTime": end - dt.timedelta(days=days),
        "EndTime": end,
    }
    while True:
        page = call(cloudwatch.get_metric_data, **kwargs)
        for result in page["MetricDataResults"]:
            values.setdefault(result["Id"], []).extend(float(v) for v in result.get("Values", []))
            status[result["Id"]] = str(result.get("StatusCode", ""))
        messages += [f"{m.get('Code')}: {m.get('Value')}" for m in page.get("Messages", [])]
        token = page.get("NextToken")
        if not token:
            break
        kwargs["NextToken"] = token
    # A series CloudWatch could not read completely (InternalError, Forbidden, PartialData)
    # is not "no datapoints": left out, its filters are unknown and select nothing, where
    # a policy's missing-value would have taken the silence for idleness.
    incomplete = [f"q{n}" for n in range(len(pairs)) if status.get(f"q{n}") != "Complete"]
    if incomplete:
        log.warning(
            "metric series not read completely",
            series=len(incomplete),
            status=sorted({status.get(q, "missing") for q in incomplete}),
            messages=messages[:3],
        )
    return {
        (resource.resource_id, spec): _combine(spec.statistic, values.get(f"q{n}", []))
        for n, (resource, spec) in enumerate(pairs)
        if status.get(f"q{n}") == "Complete"
    }
