"""boto3 sessions and clients per account: the caller's own, or an assumed role.

Clients are cached per (account, region, service); boto3 sessions are not thread-safe to
build clients from concurrently, so client creation takes a lock. An assumed role's
credentials expire (an hour by default) but the clients live as long as the process (one
AwsClients per worker): its session's credentials renew themselves by assuming the role
again before they expire (botocore's RefreshableCredentials), so a cached client keeps
working. Every client's calls pass through the circuit breaker of its (account, region,
service) (see breakers.py), and at most FINOPS_AWS_REQUESTS_PER_ENDPOINT of them are in
flight per endpoint (endpoint_gate.py).
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials

from backend.config import get_settings
from backend.providers.aws.breakers import BreakerKey, BreakerRegistry
from backend.providers.aws.endpoint_gate import EndpointGates
from backend.providers.aws.retry import call

# Our own retry policy (tenacity) owns retries; botocore's would multiply them.
_BOTO_CONFIG = Config(
    # total_max_attempts counts the first try (max_attempts counts retries: 1 meant two
    # tries, and botocore resent a CreateSnapshot whose answer was lost: two snapshots).
    retries={"total_max_attempts": 1, "mode": "standard"},
    max_pool_connections=32,
    connect_timeout=10,
    read_timeout=60,
)
ROLE_SESSION_NAME = "finops-automation"


@dataclass(frozen=True)
class AccountTarget:
    """An account to act in: its id, and the role to assume there (None: own credentials)."""

    account_id: str | None
    role_arn: str | None = None


class AwsClients:
    """Hands out clients per (account, region, service), assuming roles as needed."""

    def __init__(
        self,
        endpoint_url: str | None = None,
        base_session: Any = None,
        *,
        breakers: BreakerRegistry | None = None,
        gates: EndpointGates | None = None,
        sts_region: str | None = None,
    ) -> None:
        self._endpoint_url = endpoint_url
        self._sts_region = sts_region
        self._breakers = breakers
        self._gates = gates
        self._base = base_session or boto3.session.Session()
        self._lock = threading.Lock()
        self._sessions: dict[str | None, Any] = {}
        self._clients: dict[tuple[str | None, str, str], Any] = {}
        self._caller_account: str | None = None

    @property
    def breakers(self) -> BreakerRegistry:
        """The breakers: given, or built on first use (Redis-shared when REDIS_URL is set)."""
        with self._lock:
            return self._hooks()[0]

    def _sts(self, account: str) -> Any:
        """An STS client of the base credentials at the regional endpoint of the first
        configured region: a GovCloud or China account is not reached through us-east-1, and
        an outage there does not stop assuming roles elsewhere."""
        if self._sts_region is None:
            self._sts_region = get_settings().regions[0]
        return self._make_client(self._base, "sts", self._sts_region, account)

    def _hooks(self) -> tuple[BreakerRegistry, EndpointGates]:
        """What every client is attached to, given or built on first use. Settings are read
        here, not at construction or import: building clients for tests or scripts must not
        need a valid configuration until an AWS call is made."""
        if self._breakers is None or self._gates is None:
            settings = get_settings()
            if self._breakers is None:
                self._breakers = BreakerRegistry(settings.redis_url)
            if self._gates is None:
                self._gates = EndpointGates(settings.aws_requests_per_endpoint)
        return self._breakers, self._gates

    def caller_account(self) -> str:
        """The account of the base credentials (STS GetCallerIdentity), asked once."""
        with self._lock:
            if self._caller_account is None:
                sts = self._sts("self")
                self._caller_account = str(call(sts.get_caller_identity)["Account"])
            return self._caller_account

    def client(self, target: AccountTarget, service: str, region: str) -> Any:
        key = (target.role_arn, service, region)
        with self._lock:
            cached = self._clients.get(key)
            if cached is not None:
                return cached
            session = self._session_for(target)
            made = self._make_client(session, service, region, target.account_id or "self")
            self._clients[key] = made
            return made

    def _session_for(self, target: AccountTarget) -> Any:
        if target.role_arn is None:
            return self._base
        session = self._sessions.get(target.role_arn)
        if session is None:
            session = self._sessions[target.role_arn] = self._assumed_session(target)
        return session

    def _assumed_session(self, target: AccountTarget) -> Any:
        """A session on the role's credentials, renewed by assuming the role again.

        The first AssumeRole is made here, so a role that cannot be assumed fails now (and is
        tried again on the next `client()`: nothing is cached). botocore renews the
        credentials from 15 minutes before their Expiration (a failure then is logged and the
        old ones used) and must renew them from 10 minutes before (a failure then fails the
        call that needed them, with the AssumeRole error).
        """
        # Counted against the target account: one account's broken role must not stop
        # assuming roles in the others.
        role_arn = str(target.role_arn)
        account = target.account_id or role_arn.split(":")[4]
        sts = self._sts(account)

        def assume() -> dict[str, str]:
            creds = call(sts.assume_role, RoleArn=role_arn, RoleSessionName=ROLE_SESSION_NAME)[
                "Credentials"
            ]
            expiry = creds["Expiration"]
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": expiry.isoformat() if isinstance(expiry, dt.datetime) else expiry,
            }

        core = botocore.session.get_session()
        # botocore's own pattern (boto3 has no public setter for refreshable credentials).
        core._credentials = RefreshableCredentials.create_from_metadata(
            metadata=assume(), refresh_using=assume, method="sts-assume-role"
        )
        return boto3.session.Session(botocore_session=core)

    def _make_client(self, session: Any, service: str, region: str, account: str) -> Any:
        made = session.client(
            service, region_name=region, endpoint_url=self._endpoint_url, config=_BOTO_CONFIG
        )
        breakers, gates = self._hooks()
        breakers.attach(made, BreakerKey(account, region, service))
        gates.attach(made)
        return made


def account_targets(
    accounts: list[str], role_name: str | None, role_arn: str | None
) -> list[AccountTarget]:
    """The accounts to scan: each listed one through its role, or the configured role, or us.

    An account listed without a role name to assume is reached with the caller's own
    credentials (it must then be the caller's account; the scanner checks).
    """
    if accounts:
        return [
            AccountTarget(a, role_arn_for(a, role_name, role_arn) if role_name else None)
            for a in accounts
        ]
    if role_arn:
        return [AccountTarget(role_arn.split(":")[4], role_arn)]
    return [AccountTarget(None, None)]


def role_arn_for(account: str, role_name: str, configured_arn: str | None) -> str:
    """The role's ARN in `account`, in the partition of the configured role ARN (aws-us-gov,
    aws-cn...; "aws" without one): IAM refuses an ARN of another partition."""
    partition = configured_arn.split(":")[1] if configured_arn else "aws"
    return f"arn:{partition}:iam::{account}:role/{role_name}"
