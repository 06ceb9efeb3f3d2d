#!/usr/bin/env python3
"""Benchmarks of the distributed runtime on a moto_server, PostgreSQL and Redis.

    python bench/runtime_bench.py throughput [--actions 2000] [--workers 2]
    python bench/runtime_bench.py estop [--trials 50] [--workers 2]

throughput: N approved stops executed by `finops worker` processes (every safety check and
audit event on), against the same AWS calls issued straight from one process with boto3. The
calls are recorded from one real execution, then replayed for every other instance.
estop: while workers execute a batch, `AutoRemediationEngine().emergency_stop()`; after it
returns no action may be claimed, and the time from the call until the last claim of any
worker is the latency reported (p50/p99 over the trials).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import boto3
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.config import get_settings, overridden_environment  # noqa: E402
from backend.core.action_engine import ActionEngine  # noqa: E402
from backend.core.action_planner import ActionPlanner  # noqa: E402
from backend.core.database import dispose_engines, session_scope  # noqa: E402
from backend.core.migrations import upgrade  # noqa: E402
from backend.core.scan_service import ScanService  # noqa: E402
from backend.domain.policy.loader import load_text  # noqa: E402
from backend.providers.aws.session import AwsClients  # noqa: E402
from tests.support.servers import moto_server_process, scratch_postgres_database  # noqa: E402
from tests.support.workers import Workers, wait_until  # noqa: E402

REDIS_URL = os.environ.get("FINOPS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
PACK = """policies:
  - name: bench-stop
    resource: ec2
    filters:
      - "State.Name": running
      - "tag:bench": present
    action: stop
    mode: auto
"""


@contextmanager
def environment(moto: str, db: str, tmp: Path) -> Iterator[None]:
    pack = tmp / "pack.yml"
    pack.write_text(PACK)
    values = {
        "AWS_ENDPOINT_URL": moto,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "DATABASE_URL": db,
        "REDIS_URL": REDIS_URL,
        "FINOPS_POLICY_PATHS": str(pack),
        "FINOPS_DRY_RUN": "false",
        "FINOPS_MAX_ACTIONS_PER_RUN": "100000",
        "FINOPS_MAX_ACTIONS_PER_HOUR": "100000",
        "FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN": "100",
        "FINOPS_HEARTBEAT_INTERVAL_SECONDS": "2",
    }
    with overridden_environment(values):
        yield


def seed(moto: str, n: int, tag: str = "bench") -> list[str]:
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto)
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ids: list[str] = []
    while len(ids) < n:
        batch = min(100, n - len(ids))
        made = ec2.run_instances(
            ImageId=ami,
            MinCount=batch,
            MaxCount=batch,
            InstanceType="t3.micro",
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": tag, "Value": "1"}]}],
        )
        ids += [i["InstanceId"] for i in made["Instances"]]
    return ids


def plan() -> list[int]:
    upgrade()
    pack = load_text(PACK, "bench.yml")
    ScanService(get_settings()).run(pack=pack, regions=["us-east-1"])
    with session_scope() as session:
        result = ActionPlanner().plan(session, pack, requested_by="bench")
    return result.approved


def record_calls(action_id: int) -> list[tuple[str, str, dict[str, Any]]]:
    """Execute one action in-process and record every AWS call it made."""
    calls: list[tuple[str, str, dict[str, Any]]] = []
    session = boto3.session.Session()
    session.events.register("before-parameter-build", _capture(calls))
    clients = AwsClients(endpoint_url=get_settings().aws_endpoint_url, base_session=session)
    report = ActionEngine(clients=clients).execute([action_id], dry_run=False, triggered_by="b")
    assert report.outcomes and report.outcomes[0].result == "succeeded", report
    return calls


def _capture(calls: list[tuple[str, str, dict[str, Any]]]) -> Callable[..., None]:
    def capture(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.service_model.service_name, model.name, dict(params)))

    return capture


def replay(
    moto: str, calls: list[tuple[str, str, dict[str, Any]]], old: str, ids: list[str]
) -> float:
    """The same calls for every instance, straight from this process: the floor."""
    clients: dict[str, Any] = {}
    started = time.perf_counter()
    for iid in ids:
        for service, operation, params in calls:
            client = clients.setdefault(
                service, boto3.client(service, region_name="us-east-1", endpoint_url=moto)
            )
            method = getattr(client, _snake(operation))
            method(**_swap(params, old, iid))
    return time.perf_counter() - started


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _swap(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return new if value == old else value
    if isinstance(value, list):
        return [_swap(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    return value


def states(ids: list[int]) -> dict[str, int]:
    from sqlalchemy import func, select

    from backend.core.models import ActionRow

    with session_scope() as session:
        query = select(ActionRow.state, func.count()).where(ActionRow.id.in_(ids))
        return {s: int(n) for s, n in session.execute(query.group_by(ActionRow.state))}


def throughput(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        moto = stack.enter_context(moto_server_process())
        db = stack.enter_context(scratch_postgres_database())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(environment(moto, db, tmp))
        redis.Redis.from_url(REDIS_URL).flushdb()
        seed(moto, args.actions + 1)
        # The floor's own instances: no policy selects them, so the replay leaves the
        # workers' actions alone (it stops instances for real).
        floor_ids = seed(moto, min(args.actions, args.direct_sample), tag="floor")
        approved = plan()
        with session_scope() as session:
            from backend.core.models import ActionRow

            first = session.get(ActionRow, approved[0])
            assert first is not None
            first_instance = first.resource_id
        calls = record_calls(approved[0])
        print(f"one stop = {len(calls)} AWS calls: {[f'{s}:{o}' for s, o, _ in calls]}")
        rest = approved[1:]
        direct = replay(moto, calls, first_instance, floor_ids)
        direct_total = direct * len(rest) / min(len(rest), args.direct_sample)
        print(f"direct boto3, one process: {direct:.1f} s for {args.direct_sample} "
              f"-> {direct_total:.1f} s for {len(rest)}")  # fmt: skip
        pool = Workers(tmp)
        stack.callback(pool.stop_all)
        for _ in range(args.workers):
            pool.start()
        time.sleep(4)  # let the workers connect
        from backend.runtime.celery_app import app, celery_config

        app.conf.update(celery_config(get_settings()))
        started = time.perf_counter()
        app.send_task("finops.dispatch_due")
        wait_until(lambda: states(rest).get("succeeded", 0) + states(rest).get("failed", 0)
                   == len(rest), 3600, "the batch", every=0.5)  # fmt: skip
        took = time.perf_counter() - started
        print(f"{args.workers} workers: {took:.1f} s for {len(rest)} actions "
              f"({len(rest) / took:.1f}/s); states {states(rest)}")  # fmt: skip
        print(f"ratio workers / direct: {took / direct_total:.2f}")
        dispose_engines()


def claimed_since(moment: Any) -> int:
    from sqlalchemy import func, select

    from backend.core.models import ActionRow

    with session_scope() as session:
        query = select(func.count()).where(ActionRow.claimed_at > moment)
        return int(session.scalar(query) or 0)


def estop(args: argparse.Namespace) -> None:
    from sqlalchemy import func, select

    from backend.core.auto_remediation_engine import AutoRemediationEngine
    from backend.core.emergency_stop import EmergencyStop
    from backend.core.models import ActionRow
    from backend.core.types import utcnow
    from backend.runtime.celery_app import app, celery_config

    with ExitStack() as stack:
        moto = stack.enter_context(moto_server_process())
        db = stack.enter_context(scratch_postgres_database())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(environment(moto, db, tmp))
        redis.Redis.from_url(REDIS_URL).flushdb()
        seed(moto, args.actions)
        plan()
        app.conf.update(celery_config(get_settings()))
        pool = Workers(tmp)
        stack.callback(pool.stop_all)
        for _ in range(args.workers):
            pool.start()
        time.sleep(5)
        latencies: list[float] = []
        late_claims = 0
        engine = AutoRemediationEngine()
        for trial in range(args.trials):
            EmergencyStop().release("bench-admin", is_admin=True)
            app.control.broadcast("finops_resume")
            started = utcnow()
            app.send_task("finops.dispatch_due")

            wait_until(
                lambda since=started: claimed_since(since) > 0, 60, "claims to flow", every=0.02
            )
            time.sleep(0.05 + (trial % 5) * 0.05)
            t0 = utcnow()
            engine.emergency_stop(reason=f"bench trial {trial}", actor="bench")
            t1 = utcnow()
            time.sleep(1.5)
            with session_scope() as session:
                last = session.scalar(select(func.max(ActionRow.claimed_at)))
                late_claims += int(
                    session.scalar(select(func.count()).where(ActionRow.claimed_at > t1)) or 0
                )
            latencies.append(max(0.0, (last - t0).total_seconds()) if last else 0.0)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"{args.trials} trials, {args.workers} workers: time from emergency_stop() "
              f"to the last claim p50 {statistics.median(latencies) * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms; "
              f"claims after it returned: {late_claims}")  # fmt: skip
        dispose_engines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--actions", type=int, default=2000)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--direct-sample", type=int, default=2000)
    e = sub.add_parser("estop")
    e.add_argument("--trials", type=int, default=50)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--actions", type=int, default=800)
    args = parser.parse_args()
    {"throughput": throughput, "estop": estop}[args.what](args)


if __name__ == "__main__":
    main()
