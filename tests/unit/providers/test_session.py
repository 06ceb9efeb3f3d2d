"""AwsClients and assumed roles, on in-process moto with a simulated credential expiry.

moto accepts any key whatever its Expiration; `SimulatedExpiry` makes it behave as AWS does:
a request signed with an assumed key past that key's Expiration gets ExpiredToken.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from moto import mock_aws

from backend.config import get_settings, reset_settings_cache
from backend.core.execution_context import ExecutionContext
from backend.core.scan_service import ScanService
from backend.providers.aws import session as session_mod
from backend.providers.aws.breakers import BreakerKey, BreakerRegistry
from backend.providers.aws.endpoint_gate import EndpointGates
from backend.providers.aws.retry import call
from backend.providers.aws.session import AccountTarget, AwsClients

ACCOUNT = "222222222222"
TARGET = AccountTarget(ACCOUNT, f"arn:aws:iam::{ACCOUNT}:role/finops")


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def _aws_error(url: str, code: str, message: str) -> AWSResponse:
    xml = f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    body = (xml + "</Errors><RequestID>r</RequestID></Response>").encode()
    return AWSResponse(url, 400, {}, _Raw(body))


class SimulatedExpiry:
    """On every client AwsClients makes: AssumeRole answers are recorded (their first one can
    be made to expire at once, as if issued an hour ago), and requests signed with an expired
    key, or AssumeRole while `deny` is set, are refused as AWS would refuse them."""

    def __init__(self) -> None:
        self.expiry: dict[str, dt.datetime] = {}
        self.sts: list[tuple[str, str]] = []  # (action, URL) of every STS request
        self.assumed: list[str] = []  # access key ids, in the order AWS issued them
        self.first_expired = False
        self.deny = False

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = session_mod.AwsClients._make_client

        def make(clients: AwsClients, session: Any, service: str, region: str, acct: str) -> Any:
            made = original(clients, session, service, region, acct)
            made.meta.events.register_first("before-send", self._before_send)
            made.meta.events.register("after-call.sts.AssumeRole", self._assumed)
            return made

        monkeypatch.setattr(session_mod.AwsClients, "_make_client", make)

    def _assumed(self, parsed: dict[str, Any], **_: Any) -> None:
        creds = parsed.get("Credentials")
        if creds is None:  # refused
            return
        if self.first_expired and not self.assumed:
            creds["Expiration"] = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        self.expiry[creds["AccessKeyId"]] = creds["Expiration"]
        self.assumed.append(creds["AccessKeyId"])

    def _before_send(self, request: Any, **_: Any) -> AWSResponse | None:
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        action = re.search(r"Action=(\w+)", body)
        if action and action.group(1) in ("AssumeRole", "GetCallerIdentity"):
            self.sts.append((action.group(1), str(request.url)))
        if self.deny and "Action=AssumeRole" in body:
            return _aws_error(request.url, "AccessDenied", "not authorized: sts:AssumeRole")
        auth = request.headers.get("Authorization", b"")
        auth = auth.decode() if isinstance(auth, bytes) else str(auth)
        found = re.search(r"Credential=(\w+)/", auth)
        expiry = self.expiry.get(found.group(1)) if found else None
        if expiry is not None and expiry <= dt.datetime.now(dt.UTC):
            return _aws_error(request.url, "ExpiredToken", "The security token is expired")
        return None


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatedExpiry]:
    simulated = SimulatedExpiry()
    simulated.install(monkeypatch)
    with mock_aws():
        yield simulated


def _clients() -> AwsClients:
    return AwsClients(breakers=BreakerRegistry(), gates=EndpointGates(None))


def test_a_cached_client_assumes_the_role_again_once_its_credentials_expire(
    aws: SimulatedExpiry,
) -> None:
    aws.first_expired = True  # the worker's clients were built over an hour ago
    clients = _clients()
    ec2 = clients.client(TARGET, "ec2", "us-east-1")
    assert len(aws.assumed) == 1
    assert "Vpcs" in call(ec2.describe_vpcs)  # renewed first, not ExpiredToken
    assert len(aws.assumed) == 2
    assert clients.client(TARGET, "ec2", "us-east-1") is ec2  # still the one client
    assert "Vpcs" in call(ec2.describe_vpcs)
    assert len(aws.assumed) == 2  # the new credentials are good for an hour: kept


def test_a_renewal_refused_fails_the_call_counted_for_the_account_then_recovers(
    aws: SimulatedExpiry,
) -> None:
    aws.first_expired = True
    clients = _clients()
    ec2 = clients.client(TARGET, "ec2", "us-east-1")
    aws.deny = True
    with pytest.raises(ClientError, match="AccessDenied"):
        call(ec2.describe_vpcs)
    sts = clients.breakers.status(BreakerKey(ACCOUNT, "us-east-1", "sts"))
    assert (sts.calls, sts.failures) == (2, 1)  # the first AssumeRole, then the refused one
    aws.deny = False
    assert "Vpcs" in call(ec2.describe_vpcs)  # the next call renews them
    assert len(aws.assumed) == 2


def test_a_role_that_cannot_be_assumed_fails_at_client_and_is_tried_again(
    aws: SimulatedExpiry,
) -> None:
    aws.deny = True
    clients = _clients()
    with pytest.raises(ClientError, match="AccessDenied"):
        clients.client(TARGET, "ec2", "us-east-1")
    aws.deny = False
    assert "Vpcs" in call(clients.client(TARGET, "ec2", "us-east-1").describe_vpcs)


GOV_ARN = "arn:aws-us-gov:iam::111111111111:role/finops"


def test_roles_keep_the_configured_partition_and_sts_is_regional(
    aws: SimulatedExpiry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COST_OPTIMIZATION_ROLE_ARN", GOV_ARN)
    monkeypatch.setenv("FINOPS_ACCOUNTS", "111111111111,222222222222")
    monkeypatch.setenv("FINOPS_REGIONS", "us-gov-west-1")
    reset_settings_cache()
    settings = get_settings()
    gov = "arn:aws-us-gov:iam::222222222222:role/finops"
    # the scan's targets, and the target an action in that account is executed through
    assert [t.role_arn for t in ScanService(settings).targets()] == [GOV_ARN, gov]
    no_stop: Any = None  # _target reads only the settings
    executing = ExecutionContext(settings, _clients(), no_stop, None)
    assert executing._target("222222222222").role_arn == gov

    clients = _clients()
    clients.client(AccountTarget("222222222222", gov), "ec2", "us-gov-west-1")
    clients.caller_account()
    assert [(action, url.split("/")[2]) for action, url in aws.sts] == [
        ("AssumeRole", "sts.us-gov-west-1.amazonaws.com"),
        ("GetCallerIdentity", "sts.us-gov-west-1.amazonaws.com"),
    ]
