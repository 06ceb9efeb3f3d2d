"""Circuit breakers: the failure-rate rule, open / half-open / closed, and the botocore hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import pybreaker
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from backend.config import get_settings, reset_settings_cache
from backend.providers.aws.breakers import (
    BreakerKey,
    BreakerRegistry,
    CircuitOpenError,
    classify,
)
from backend.providers.aws.retry import call, is_retryable
from backend.providers.aws.session import AccountTarget, AwsClients

KEY = BreakerKey("123456789012", "us-west-2", "ec2")
OTHER = BreakerKey("self", "us-east-1", "rds")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(clock: Clock) -> BreakerRegistry:
    return BreakerRegistry(min_calls=10, failure_ratio=0.5, reset_timeout=30, clock=clock)


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "DescribeVolumes",
    )


def fail(registry: BreakerRegistry, key: BreakerKey = KEY, times: int = 1) -> None:
    for _ in range(times):
        registry.record(key, True, error="Throttling: slow down")


def succeed(registry: BreakerRegistry, key: BreakerKey = KEY, times: int = 1) -> None:
    for _ in range(times):
        registry.record(key, False)


def test_what_counts_as_a_failure() -> None:
    for code, status in [
        ("Throttling", 400),
        ("RequestLimitExceeded", 503),
        ("ServiceUnavailable", 503),
        ("InternalError", 500),
        ("SomethingNew", 502),
        ("AccessDenied", 403),
        ("UnauthorizedOperation", 403),
        ("ExpiredToken", 400),
    ]:
        assert classify(client_error(code, status)) is True, code
    for code in ["InvalidVolume.NotFound", "InvalidParameterValue", "DependencyViolation"]:
        assert classify(client_error(code, 400)) is False, code
    for exc in [
        EndpointConnectionError(endpoint_url="http://x"),
        ConnectionClosedError(endpoint_url="http://x"),
        ReadTimeoutError(endpoint_url="http://x"),
        ConnectTimeoutError(endpoint_url="http://x"),
    ]:
        assert classify(exc) is True, exc
    assert classify(NoCredentialsError()) is None
    assert classify(ValueError("bug")) is None


def test_opens_on_the_failure_rate_once_enough_calls_were_seen(
    registry: BreakerRegistry,
) -> None:
    fail(registry, times=9)  # all failed, but fewer than min_calls (10)
    assert registry.status(KEY).state == pybreaker.STATE_CLOSED
    fail(registry)
    assert registry.status(KEY).state == pybreaker.STATE_OPEN


def test_a_rate_below_the_ratio_keeps_it_closed(registry: BreakerRegistry) -> None:
    succeed(registry, times=6)
    fail(registry, times=5)  # 5 of 11 failed: under half
    state = registry.status(KEY)
    assert (state.state, state.calls, state.failures) == (pybreaker.STATE_CLOSED, 11, 5)
    assert state.failure_rate == pytest.approx(5 / 11)
    fail(registry)  # 6 of 12: half
    assert registry.status(KEY).state == pybreaker.STATE_OPEN


def test_old_failures_leave_the_window(registry: BreakerRegistry, clock: Clock) -> None:
    fail(registry, times=9)
    clock.advance(75)  # past the 60 s window
    assert registry.status(KEY).calls == 0
    fail(registry, times=9)
    assert registry.status(KEY).state == pybreaker.STATE_CLOSED


def test_open_refuses_fast_and_says_who_and_when(registry: BreakerRegistry, clock: Clock) -> None:
    fail(registry, times=10)
    opened = clock.now
    with pytest.raises(CircuitOpenError) as refused:
        registry.before_call(KEY)
    message = str(refused.value)
    for part in ["ec2", "123456789012", "us-west-2", "Throttling: slow down", "until"]:
        assert part in message
    assert refused.value.retry_after is not None
    assert refused.value.retry_after.timestamp() == pytest.approx(opened + 30)
    assert isinstance(refused.value, pybreaker.CircuitBreakerError)
    assert not is_retryable(refused.value)
    assert registry.before_call(OTHER) is False  # other keys are not affected


def test_after_the_timeout_one_trial_goes_through_and_its_success_closes(
    registry: BreakerRegistry, clock: Clock
) -> None:
    fail(registry, times=10)
    clock.advance(29.5)
    with pytest.raises(CircuitOpenError):
        registry.before_call(KEY)
    clock.advance(1)
    assert registry.before_call(KEY) is True  # the trial
    assert registry.status(KEY).state == pybreaker.STATE_HALF_OPEN
    with pytest.raises(CircuitOpenError, match="trial call is in progress"):
        registry.before_call(KEY)
    registry.record(KEY, False, trial=True)
    state = registry.status(KEY)
    assert state.state == pybreaker.STATE_CLOSED
    assert (state.calls, state.failures, state.retry_after) == (1, 0, None)  # fresh window
    assert registry.before_call(KEY) is False
    fail(registry)  # one failure after closing does not reopen it
    assert registry.status(KEY).state == pybreaker.STATE_CLOSED


def test_a_failed_trial_reopens_for_another_timeout(
    registry: BreakerRegistry, clock: Clock
) -> None:
    fail(registry, times=10)
    clock.advance(31)
    assert registry.before_call(KEY) is True
    registry.record(KEY, True, trial=True, error="ServiceUnavailable: down")
    state = registry.status(KEY)
    assert state.state == pybreaker.STATE_OPEN
    assert state.retry_after is not None
    assert state.retry_after.timestamp() == pytest.approx(clock.now + 30)
    with pytest.raises(CircuitOpenError, match="ServiceUnavailable: down"):
        registry.before_call(KEY)
    clock.advance(31)
    assert registry.before_call(KEY) is True  # the token was given back


def test_a_trial_that_says_nothing_about_aws_or_is_lost_frees_the_next_trial(
    registry: BreakerRegistry, clock: Clock
) -> None:
    fail(registry, times=10)
    clock.advance(31)
    assert registry.before_call(KEY) is True
    registry.record(KEY, None, trial=True)  # e.g. no credentials: AWS was never asked
    assert registry.status(KEY).state == pybreaker.STATE_HALF_OPEN
    assert registry.before_call(KEY) is True  # lost: its worker died without an answer
    with pytest.raises(CircuitOpenError):
        registry.before_call(KEY)
    clock.advance(registry.trial_ttl + 1)
    assert registry.before_call(KEY) is True


def test_open_breakers_reports_state_counts_and_times(
    registry: BreakerRegistry, clock: Clock
) -> None:
    succeed(registry, OTHER, times=3)
    fail(registry, OTHER)
    succeed(registry, times=2)
    fail(registry, times=10)
    (only,) = registry.open_breakers()
    assert only.key == KEY and only.key.label == "123456789012/us-west-2/ec2"
    assert (only.state, only.calls, only.failures) == (pybreaker.STATE_OPEN, 12, 10)
    assert only.failure_rate == pytest.approx(10 / 12)
    assert only.opened_at is not None and only.retry_after is not None
    assert only.opened_at.timestamp() == pytest.approx(clock.now)
    assert (only.retry_after - only.opened_at).total_seconds() == pytest.approx(30)
    assert only.last_error == "Throttling: slow down"
    rates = {s.key: s.failure_rate for s in registry.states()}
    assert rates == {KEY: pytest.approx(10 / 12), OTHER: pytest.approx(0.25)}


# --- the botocore hooks, through AwsClients, with a fake transport (no network) ---


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> list[bytes]:
        return [self._body]


def _answer(status: int, body: str) -> Callable[..., AWSResponse]:
    return lambda request: AWSResponse(request.url, status, {}, _Raw(body.encode()))


def _error(status: int, code: str) -> Callable[..., AWSResponse]:
    xml = f"<Response><Errors><Error><Code>{code}</Code><Message>m</Message></Error></Errors>"
    return _answer(status, xml + "<RequestID>r</RequestID></Response>")


def _raise(exc: Exception) -> Callable[..., AWSResponse]:
    def send(request: Any) -> AWSResponse:
        raise exc

    return send


VPCS = _answer(200, "<DescribeVpcsResponse><vpcSet/></DescribeVpcsResponse>")


class FakeAws:
    """Answers each request sent by clients of `session` from a script; logs the operations."""

    def __init__(self) -> None:
        self.session = boto3.session.Session(
            aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
        )
        self.script: list[Callable[..., AWSResponse]] = []
        self.sent: list[str] = []
        self.session.events.register("before-send", self._send)

    def _send(self, request: Any, **_: Any) -> AWSResponse:
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        self.sent.append(body.split("Action=")[1].split("&")[0])
        return self.script.pop(0)(request)


@pytest.fixture
def aws() -> FakeAws:
    return FakeAws()


def test_every_client_call_is_counted_by_outcome(aws: FakeAws, registry: BreakerRegistry) -> None:
    clients = AwsClients(base_session=aws.session, breakers=registry)
    ec2 = clients.client(AccountTarget(None), "ec2", "us-west-2")
    key = BreakerKey("self", "us-west-2", "ec2")
    aws.script = [_error(400, "Throttling"), VPCS]
    call(ec2.describe_vpcs)  # retried past the throttling
    aws.script = [_error(400, "InvalidVpcID.NotFound")]
    with pytest.raises(ClientError):
        ec2.describe_vpcs()  # an answer: not a failure
    aws.script = [_raise(ConnectionClosedError(endpoint_url="http://x"))]
    with pytest.raises(ConnectionClosedError):
        ec2.describe_vpcs()
    state = registry.status(key)
    assert (state.calls, state.failures) == (4, 2)
    assert state.last_error is not None and "ConnectionClosedError" in state.last_error
    assert aws.sent == ["DescribeVpcs"] * 4


def test_an_open_breaker_stops_calls_before_they_are_sent(aws: FakeAws, clock: Clock) -> None:
    registry = BreakerRegistry(min_calls=2, failure_ratio=0.5, clock=clock)
    clients = AwsClients(base_session=aws.session, breakers=registry)
    ec2 = clients.client(AccountTarget(None), "ec2", "us-west-2")
    aws.script = [_error(503, "ServiceUnavailable")] * 5
    with pytest.raises(CircuitOpenError):
        call(ec2.describe_vpcs)  # two 503s open it; the third try is refused, not retried
    assert len(aws.sent) == 2
    with pytest.raises(CircuitOpenError, match="ServiceUnavailable"):
        ec2.describe_vpcs()
    assert len(aws.sent) == 2
    clock.advance(31)
    aws.script = [VPCS]
    ec2.describe_vpcs()  # the trial
    assert registry.status(BreakerKey("self", "us-west-2", "ec2")).state == "closed"
    assert len(aws.sent) == 3


def test_sts_calls_count_under_sts_for_the_account_whose_role_is_assumed(
    aws: FakeAws, registry: BreakerRegistry
) -> None:
    clients = AwsClients(base_session=aws.session, breakers=registry)
    aws.script = [_error(403, "AccessDenied")]
    with pytest.raises(ClientError, match="AccessDenied"):
        clients.client(
            AccountTarget("210987654321", "arn:aws:iam::210987654321:role/finops"),
            "ec2",
            "eu-west-1",
        )
    assert aws.sent == ["AssumeRole"]  # access denied is not retried
    assumed = registry.status(BreakerKey("210987654321", "us-east-1", "sts"))
    assert (assumed.calls, assumed.failures) == (1, 1)
    ident = "<GetCallerIdentityResult><Account>123456789012</Account></GetCallerIdentityResult>"
    aws.script = [_answer(200, f"<GetCallerIdentityResponse>{ident}</GetCallerIdentityResponse>")]
    assert clients.caller_account() == "123456789012"
    own = registry.status(BreakerKey("self", "us-east-1", "sts"))
    assert (own.calls, own.failures) == (1, 0)


def test_the_default_registry_reads_settings_only_when_a_client_is_made(
    aws: FakeAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []

    def counting() -> Any:
        asked.append(1)
        return get_settings()

    monkeypatch.setattr("backend.providers.aws.session.get_settings", counting)
    clients = AwsClients(base_session=aws.session)
    assert asked == []
    ec2 = clients.client(AccountTarget(None), "ec2", "us-east-1")
    clients.client(AccountTarget(None), "rds", "us-east-1")
    assert asked == [1]
    assert not clients.breakers.shared  # no REDIS_URL: the embedded mode keeps it in memory
    aws.script = [VPCS]
    ec2.describe_vpcs()
    (state,) = clients.breakers.states()
    assert (state.key, state.calls) == (BreakerKey("self", "us-east-1", "ec2"), 1)


def test_an_unreachable_redis_lets_aws_calls_through(
    aws: FakeAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    reset_settings_cache()
    ec2 = AwsClients(base_session=aws.session).client(AccountTarget(None), "ec2", "us-east-1")
    aws.script = [VPCS, _error(503, "ServiceUnavailable")]
    assert ec2.describe_vpcs()["Vpcs"] == []
    with pytest.raises(ClientError, match="ServiceUnavailable"):
        ec2.describe_vpcs()
    assert len(aws.sent) == 2
