from __future__ import annotations

import datetime as dt

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from backend.providers.aws.describe import (
    UnknownTagsError,
    jsonable,
    required_tags,
    tag_dict,
    transition_time,
)
from backend.providers.aws.metrics import _combine
from backend.providers.aws.retry import describe_error, is_retryable
from backend.providers.aws.session import account_targets


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "DescribeInstances",
    )


def test_stop_time_is_read_from_the_transition_reason() -> None:
    when = transition_time("User initiated (2024-05-01 12:30:00 GMT)")
    assert when == dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
    assert transition_time("User initiated (2024-05-01 12:30:00 UTC)") == when
    assert transition_time("") is None
    assert transition_time(None) is None


def test_aws_answers_become_json() -> None:
    when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    got = jsonable({"LaunchTime": when, "Nested": [{"T": when}], "ResponseMetadata": {}})
    assert got == {
        "LaunchTime": "2024-01-02T03:04:05+00:00",
        "Nested": [{"T": "2024-01-02T03:04:05+00:00"}],
    }


def test_tags_become_a_dict() -> None:
    assert tag_dict([{"Key": "env", "Value": "prod"}, {"Key": "empty"}]) == {
        "env": "prod",
        "empty": "",
    }
    assert tag_dict(None) == {}


def test_tags_aws_always_sends_are_unknown_when_missing_and_empty_when_empty() -> None:
    assert required_tags({"TagList": []}, "TagList", "db1") == {}
    assert required_tags({"TagList": [{"Key": "env", "Value": "prod"}]}, "TagList", "db1") == {
        "env": "prod"
    }
    with pytest.raises(UnknownTagsError, match="db1: the answer has no TagList"):
        required_tags({}, "TagList", "db1")


def test_retry_only_what_can_succeed_later() -> None:
    assert is_retryable(client_error("Throttling"))
    assert is_retryable(client_error("RequestLimitExceeded", 503))
    assert is_retryable(client_error("Whatever", 500))
    assert is_retryable(EndpointConnectionError(endpoint_url="http://x"))
    assert not is_retryable(client_error("UnauthorizedOperation", 403))
    assert not is_retryable(client_error("InvalidParameterValue"))
    assert not is_retryable(ValueError("bug"))
    assert describe_error(client_error("AccessDenied")) == "AccessDenied: m"


def test_window_datapoints_fold_by_statistic() -> None:
    assert _combine("Sum", [1, 2, 3]) == 6
    assert _combine("Maximum", [1, 5, 3]) == 5
    assert _combine("Minimum", [4, 2]) == 2
    assert _combine("Average", [2, 4]) == 3
    assert _combine("Average", []) is None


def test_account_targets() -> None:
    assert account_targets([], None, None)[0].role_arn is None
    via_arn = account_targets([], None, "arn:aws:iam::111111111111:role/r")
    assert via_arn[0].account_id == "111111111111"
    listed = account_targets(["111111111111", "222222222222"], "finops", None)
    assert [t.role_arn for t in listed] == [
        "arn:aws:iam::111111111111:role/finops",
        "arn:aws:iam::222222222222:role/finops",
    ]
    gov = account_targets(["222222222222"], "finops", "arn:aws-cn:iam::111111111111:role/x")
    assert gov[0].role_arn == "arn:aws-cn:iam::222222222222:role/finops"  # its partition
