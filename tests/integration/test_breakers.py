"""Circuit breakers against a real moto_server behind the fault proxy, state in a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from botocore.exceptions import ClientError

from backend.providers.aws.breakers import BreakerKey, BreakerRegistry, CircuitOpenError
from backend.providers.aws.retry import call
from backend.providers.aws.session import AccountTarget, AwsClients
from tests.support.fault_proxy import Fault, FaultProxy

pytestmark = pytest.mark.moto_server
REDIS_DB = 13  # ours alone: flushed before and after each test
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
ROOT = Path(__file__).resolve().parents[2]
EC2 = BreakerKey("self", "us-east-1", "ec2")
SENT = ("us-east-1", "ec2")  # the proxy's request counter for EC2 in us-east-1


@pytest.fixture
def shared_redis() -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable at 127.0.0.1:6379 ({exc}); start it to run these")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(upstream=moto_url).start()
    yield fault_proxy
    fault_proxy.stop()


def clients_for(
    proxy: FaultProxy, shared_redis: redis.Redis, min_calls: int = 5, reset_timeout: float = 2.0
) -> AwsClients:
    """A stand-in for one worker process: its own clients and registry, the shared Redis."""
    registry = BreakerRegistry(
        redis_client=shared_redis, reset_timeout=reset_timeout, min_calls=min_calls
    )
    return AwsClients(endpoint_url=proxy.url, breakers=registry)


def ec2_of(clients: AwsClients) -> Any:
    return clients.client(AccountTarget(None), "ec2", "us-east-1")


def sleep_until(moment: datetime | None) -> None:
    assert moment is not None
    time.sleep(max(0.0, moment.timestamp() - time.time()) + 0.2)


def open_with_5xx(proxy: FaultProxy, clients: AwsClients) -> None:
    proxy.faults.append(Fault(service="ec2", kind="unavailable"))
    ec2 = ec2_of(clients)
    with pytest.raises(ClientError, match="ServiceUnavailable"):
        call(ec2.describe_vpcs)  # five tries; the fifth failure opens it
    assert proxy.requests[SENT] == 5
    assert clients.breakers.status(EC2).state == "open"


def test_30_percent_throttling_is_absorbed_by_retries_and_its_rate_reported(
    proxy: FaultProxy, shared_redis: redis.Redis
) -> None:
    clients = clients_for(proxy, shared_redis, min_calls=20)  # 20 calls, 50 %: the defaults
    fault = Fault(service="ec2", kind="throttle", rate=0.3)
    proxy.faults.append(fault)
    ec2 = ec2_of(clients)
    for _ in range(30):
        assert call(ec2.describe_vpcs)["Vpcs"]
    sent = proxy.requests[SENT]
    assert fault.hits == int(sent * 0.3) and sent == 30 + fault.hits
    state = clients.breakers.status(EC2)
    assert state.state == "closed"
    assert (state.calls, state.failures) == (sent, fault.hits)
    assert state.failure_rate == pytest.approx(0.3, abs=0.03)
    assert state.last_error is not None and state.last_error.startswith("Throttling")
    # Another process's registry sees the same figure in Redis without having used the key.
    (seen,) = BreakerRegistry(redis_client=shared_redis).states()
    assert (seen.key, seen.calls, seen.failures) == (EC2, sent, fault.hits)


def test_sustained_5xx_opens_it_calls_fail_fast_then_a_trial_closes_it(
    proxy: FaultProxy, shared_redis: redis.Redis
) -> None:
    clients = clients_for(proxy, shared_redis)
    open_with_5xx(proxy, clients)
    ec2 = ec2_of(clients)
    started = time.monotonic()
    with pytest.raises(CircuitOpenError) as refused:
        call(ec2.describe_vpcs)
    assert time.monotonic() - started < 0.5  # refused at once, not retried with backoff
    assert proxy.requests[SENT] == 5  # nothing reached the proxy
    for part in ["ec2", "self", "us-east-1", "ServiceUnavailable", "until"]:
        assert part in str(refused.value)
    (state,) = clients.breakers.open_breakers()
    assert (state.key, state.state, state.failures) == (EC2, "open", 5)

    sleep_until(state.retry_after)
    with pytest.raises(CircuitOpenError):  # the trial fails: open again, retries refused
        call(ec2.describe_vpcs)
    assert proxy.requests[SENT] == 6

    proxy.faults.clear()
    sleep_until(clients.breakers.status(EC2).retry_after)
    assert call(ec2.describe_vpcs)["Vpcs"]
    assert proxy.requests[SENT] == 7
    assert clients.breakers.status(EC2).state == "closed"
    assert clients.breakers.open_breakers() == []


def test_the_open_state_is_shared_with_other_instances_and_processes(
    proxy: FaultProxy, shared_redis: redis.Redis, tmp_path: Path
) -> None:
    # Open long enough for a process to start on a loaded machine (2 s was not, in CI).
    open_with_5xx(proxy, clients_for(proxy, shared_redis, reset_timeout=120.0))
    other = clients_for(proxy, shared_redis, reset_timeout=120.0)  # its own registry
    with pytest.raises(CircuitOpenError):
        ec2_of(other).describe_vpcs()
    # A separate process, wired the default way: REDIS_URL is all it is told.
    script = (
        "import json, sys\n"
        "from backend.providers.aws.breakers import CircuitOpenError\n"
        "from backend.providers.aws.session import AccountTarget, AwsClients\n"
        "clients = AwsClients(endpoint_url=sys.argv[1])\n"
        "out = {'open': [s.key.label for s in clients.breakers.open_breakers()]}\n"
        "ec2 = clients.client(AccountTarget(None), 'ec2', 'us-east-1')\n"
        "try:\n"
        "    ec2.describe_vpcs()\n"
        "    out['result'] = 'answered'\n"
        "except CircuitOpenError as exc:\n"
        "    out['result'] = str(exc)\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "REDIS_URL": REDIS_URL, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, proxy.url],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out = json.loads(done.stdout)
    assert out["open"] == ["self/us-east-1/ec2"]
    assert "circuit breaker open" in out["result"] and "ServiceUnavailable" in out["result"]
    assert proxy.requests[SENT] == 5  # neither the instance nor the process reached AWS


def test_access_denied_counts_as_a_failure_and_is_not_retried(
    proxy: FaultProxy, shared_redis: redis.Redis
) -> None:
    clients = clients_for(proxy, shared_redis)
    proxy.faults.append(Fault(service="ec2", kind="access-denied"))
    ec2 = ec2_of(clients)
    for attempt in range(1, 5):
        with pytest.raises(ClientError, match="UnauthorizedOperation"):
            call(ec2.describe_vpcs)
        assert proxy.requests[SENT] == attempt  # one request per call: no retries
    state = clients.breakers.status(EC2)
    assert (state.state, state.calls, state.failures) == ("closed", 4, 4)
    with pytest.raises(ClientError, match="UnauthorizedOperation"):
        call(ec2.describe_vpcs)  # 5 of 5 failed: it opens
    with pytest.raises(CircuitOpenError, match="UnauthorizedOperation"):
        call(ec2.describe_vpcs)
    assert proxy.requests[SENT] == 5


def test_an_answer_like_not_found_is_not_a_failure(
    proxy: FaultProxy, shared_redis: redis.Redis
) -> None:
    clients = clients_for(proxy, shared_redis)
    ec2 = ec2_of(clients)
    for _ in range(6):
        with pytest.raises(ClientError, match=r"InvalidVolume\.NotFound"):
            call(ec2.describe_volumes, VolumeIds=["vol-0123456789abcdef0"])
    state = clients.breakers.status(EC2)
    assert (state.state, state.calls, state.failures) == ("closed", 6, 0)


def test_assume_role_calls_count_under_sts_for_the_target_account(
    proxy: FaultProxy, shared_redis: redis.Redis
) -> None:
    clients = clients_for(proxy, shared_redis)
    proxy.faults.append(Fault(service="sts", kind="unavailable", times=1))
    target = AccountTarget("123456789012", "arn:aws:iam::123456789012:role/finops")
    ec2 = clients.client(target, "ec2", "us-east-1")  # assumes the role, after one retry
    assert call(ec2.describe_vpcs)["Vpcs"]
    sts = clients.breakers.status(BreakerKey("123456789012", "us-east-1", "sts"))
    assert (sts.calls, sts.failures) == (2, 1)
    assert clients.breakers.status(BreakerKey("123456789012", "us-east-1", "ec2")).calls == 1
