"""GetMetricData's per-series status: a series CloudWatch could not read is unknown, never
"no datapoints", which a policy's missing-value would read as idle."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from backend.domain.policy import evaluate, load_pack
from backend.domain.policy.evaluate import EvaluationContext
from backend.domain.resources import MetricSpec, Resource, ResourceKind
from backend.providers.aws.metrics import fetch_metric_summaries

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
ARN = "arn:aws:elasticloadbalancing:us-east-1:111111111111:loadbalancer/app/web/50dc6c495c0c9188"
SPEC = MetricSpec("AWS/ApplicationELB", "RequestCount", "Sum", 7)
REPO = Path(__file__).resolve().parents[3]


class CloudWatch:
    """Answers every series with the given status and no values, over two pages."""

    def __init__(self, status: str) -> None:
        self.status = status

    def get_metric_data(self, **kwargs: Any) -> dict[str, Any]:
        results = [
            {"Id": q["Id"], "Timestamps": [], "Values": [], "StatusCode": "PartialData"}
            for q in kwargs["MetricDataQueries"]
        ]
        if "NextToken" not in kwargs:
            return {"MetricDataResults": results, "NextToken": "page-2"}
        for result in results:
            result["StatusCode"] = self.status
        return {"MetricDataResults": results, "Messages": [{"Code": "X", "Value": "y"}]}


def load_balancer() -> Resource:
    return Resource(
        kind=ResourceKind.LOAD_BALANCER,
        resource_id=ARN,
        account_id="111111111111",
        region="us-east-1",
        state="active",
        attributes={"Type": "application"},
    )


@pytest.mark.parametrize("status", ["InternalError", "Forbidden", "PartialData"])
def test_an_unread_series_is_unknown_and_selects_nothing(status: str) -> None:
    lb = load_balancer()
    metrics = fetch_metric_summaries(CloudWatch(status), [(lb, SPEC)], now=NOW)
    assert metrics == {}
    pack = load_pack([REPO / "policies" / "elb.yml"])  # idle-alb-delete: missing-value 0
    context = EvaluationContext.from_resources([lb], now=NOW, metrics=metrics)
    assert list(evaluate(pack, [lb], context)) == []


def test_a_complete_series_without_datapoints_is_none() -> None:
    lb = load_balancer()
    assert fetch_metric_summaries(CloudWatch("Complete"), [(lb, SPEC)], now=NOW) == {
        (ARN, SPEC): None
    }
