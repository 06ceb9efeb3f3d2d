#!/usr/bin/env python
"""Health of the automation, one line per check: the runbook's "Verify System Recovery".

    python scripts/health-check.py [--exit-code] [--json]

Checks the database and its schema, Redis (when REDIS_URL is set), the workers' heartbeats,
the safety system, the emergency stop and AWS. It only reads: nothing is migrated, written
or changed. With --exit-code the exit status is 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Run from a checkout without installing: the repository root holds the `backend` package.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AWS_TIMEOUT = 10.0  # seconds: a health check must answer even when AWS does not
REDIS_TIMEOUT = 3.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def check_database() -> str:
    from backend.core.database import check_database, database_url, redacted

    check_database()
    return f"{redacted(database_url())} answers"


def check_schema() -> str:
    from backend.core.migrations import current_revision, head_revision

    current, head = current_revision(), head_revision()
    if current != head:
        raise RuntimeError(
            f"at revision {current or 'none (not migrated)'}, the code needs {head}: "
            "run `finops db upgrade`"
        )
    return f"at revision {head} (current)"


def check_redis() -> str:
    from backend.config import get_settings

    url = get_settings().redis_url
    if not url:
        return "not configured (embedded mode: work runs in-process)"
    try:
        import redis  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise RuntimeError(
            f"REDIS_URL is set but the redis client is not installed ({url})"
        ) from None
    client = redis.Redis.from_url(
        url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
    )
    client.ping()
    return "answers PING"


def check_workers() -> str:
    import datetime as dt

    from sqlalchemy import select

    from backend.config import get_settings
    from backend.core.database import session_scope
    from backend.core.models import WorkerHeartbeatRow
    from backend.core.types import utcnow

    settings = get_settings()
    if not settings.redis_url:
        return "n/a (embedded mode: no separate workers)"
    # The configured limit (FINOPS_HEARTBEAT_STALE_SECONDS), as get_status and /health/ready.
    limit = settings.heartbeat_stale_seconds
    now = utcnow()
    with session_scope() as session:
        beats = list(session.scalars(select(WorkerHeartbeatRow)))
    fresh = [b for b in beats if now - b.last_seen <= dt.timedelta(seconds=limit)]
    if not fresh:
        seen = f" ({len(beats)} stale)" if beats else ""
        raise RuntimeError(f"no worker heartbeat in the last {limit:g}s{seen}")
    newest = max(b.last_seen for b in fresh)
    return (
        f"{len(fresh)} worker(s) alive, last heartbeat {int((now - newest).total_seconds())}s ago"
    )


def check_safety() -> str:
    from backend.core.safety_checker import SafetyChecker

    checker = SafetyChecker()
    status, selftest = checker.system_status(), checker.run_full_check()
    failed = [name for name, ok, _ in selftest.results if not ok]
    problems = [p.splitlines()[0] for p in status.problems]
    problems += [f"self-test failed: {', '.join(failed)}"] if failed else []
    if not status.active or failed:
        raise RuntimeError("; ".join(problems or ["the safety system is not active"]))
    return f"active; self-test {len(selftest.results)} of {len(selftest.results)} cases held"


def check_emergency_stop() -> str:
    from backend.core.emergency_stop import EmergencyStop

    state = EmergencyStop().state()  # with a stop key left in Redis, which stops as well
    if state.stops:
        raise RuntimeError(state.describe())
    return state.describe()


def check_aws() -> str:
    from backend.config import get_settings
    from backend.providers.aws.retry import describe_error
    from backend.providers.aws.session import AccountTarget, AwsClients

    settings = get_settings()
    result: dict[str, str] = {}

    def probe() -> None:
        try:
            clients = AwsClients(endpoint_url=settings.aws_endpoint_url)
            text = f"account {clients.caller_account()}"
            role = settings.cost_optimization_role_arn
            if role:
                sts = clients.client(AccountTarget(None, role), "sts", "us-east-1")
                text += f"; assumed {sts.get_caller_identity()['Arn']}"
            result["ok"] = text
        except Exception as exc:  # noqa: BLE001 - reported as the check's failure
            result["error"] = _aws_reason(describe_error(exc))

    # A daemon thread: a hung endpoint cannot keep the check (or the process) waiting.
    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(AWS_TIMEOUT)
    if worker.is_alive():
        raise RuntimeError(f"no answer from STS within {AWS_TIMEOUT:.0f}s")
    if "error" in result:
        raise RuntimeError(result["error"])
    where = f" via {settings.aws_endpoint_url}" if settings.aws_endpoint_url else ""
    return f"reachable{where}: {result['ok']}"


def _aws_reason(error: str) -> str:
    if "NoCredentialsError" in error:
        return (
            "no AWS credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID, or an IAM role; "
            f"AWS_ENDPOINT_URL for a simulated account): {error}"
        )
    return error


CHECKS: dict[str, Callable[[], str]] = {
    "database": check_database,
    "schema": check_schema,
    "redis": check_redis,
    "workers": check_workers,
    "safety system": check_safety,
    "emergency stop": check_emergency_stop,
    "aws": check_aws,
}
NEEDS_DATABASE = ("schema", "emergency stop")


def run_checks() -> list[Check]:
    from backend.config import SettingsError, get_settings
    from backend.providers.aws.retry import describe_error

    try:
        get_settings()
    except SettingsError as exc:
        return [Check("configuration", False, str(exc).replace("\n", " "))]
    checks: list[Check] = []
    for name, check in CHECKS.items():
        database_down = bool(checks) and not checks[0].ok
        if database_down and name in NEEDS_DATABASE:
            why = "not checked: the database is unavailable"
            why += " (the engine fails closed: nothing executes)" * (name == "emergency stop")
            checks.append(Check(name, False, why))
            continue
        try:
            checks.append(Check(name, True, check()))
        except Exception as exc:  # noqa: BLE001 - each failure is one line, never a traceback
            detail = str(exc) if isinstance(exc, RuntimeError) else describe_error(exc)
            checks.append(Check(name, False, (detail.strip().splitlines() or ["?"])[0]))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--exit-code", action="store_true", help="exit 1 if any check fails")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    checks = run_checks()
    healthy = all(c.ok for c in checks)
    failed = [c.name for c in checks if not c.ok]
    if args.json:
        body: dict[str, Any] = {"healthy": healthy, "checks": [asdict(c) for c in checks]}
        print(json.dumps(body, indent=2))
    else:
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.name + ':':15} {c.detail}", flush=True)
        print("healthy" if healthy else f"UNHEALTHY: {', '.join(failed)}")
    return 1 if args.exit_code and not healthy else 0


if __name__ == "__main__":
    sys.exit(main())
