"""The readiness checks behind /health/ready: each one passes, warns or fails.

Fail (503, taken out of the load balancer): the database does not answer, its schema is not
the code's, Redis is configured and does not answer, the safety system is not active.

Warn (still ready): the emergency stop is engaged, or no worker has sent a heartbeat. The
runbook's P0 flow engages the stop and scales the workers to zero, then keeps using the API
and verifies it with `curl -f .../health/ready` ("Verification Steps", step 2) and
`kubectl wait --for=condition=available deployment/finops-api`: an API that went unready
when stopped would fail those checks, and would drop out of the Service just when an
administrator needs it to release the stop. The stop is reported in the body instead; the
engine-status metric and FinOpsAutomationEngineDown say that automation is not running.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import select

from backend.api.context import ApiContext
from backend.core.database import check_database, redacted
from backend.core.db_deadline import answer_within
from backend.core.migrations import current_revision, head_revision, schema_advice
from backend.core.models import WorkerHeartbeatRow
from backend.core.types import utcnow
from backend.providers.aws.retry import describe_error

Status = Literal["pass", "warn", "fail"]
REDIS_TIMEOUT = 2.0  # seconds: a probe must answer before the kubelet gives up on it
DATABASE_LIMIT = 2.0  # seconds for one statement of the checks (db_deadline adds its grace)
DEADLINE = 5.0  # seconds for the whole answer, whatever hangs (a reconnect, a full pool)
# Two at most: checks stuck on a paused database queue here instead of piling up threads.
_checks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readiness")


@dataclass
class Check:
    status: Status
    detail: str


@dataclass
class Readiness:
    checks: dict[str, Check] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return all(c.status != "fail" for c in self.checks.values())

    @property
    def reasons(self) -> list[str]:
        return [f"{n}: {c.detail}" for n, c in self.checks.items() if c.status == "fail"]

    def as_dict(self) -> dict[str, object]:
        return {
            "status": "ready" if self.ready else "not ready",
            "reasons": self.reasons,
            "checks": {n: {"status": c.status, "detail": c.detail} for n, c in self.checks.items()},
        }


def check_readiness_within(context: ApiContext, deadline: float | None = None) -> Readiness:
    """check_readiness(), answered within `deadline` seconds: a database that accepts
    connections and never answers is a failed check, not a probe that hangs."""
    deadline = deadline or DEADLINE
    future = _checks.submit(_limited, context)
    try:
        return future.result(timeout=deadline)
    except TimeoutError:
        result = Readiness()
        result.checks["database"] = Check("fail", f"no answer in {deadline:g} s")
        for name in ("redis", "schema", "safety_system", "emergency_stop", "workers"):
            result.checks[name] = Check("fail", "not checked: the database did not answer")
        return result


def _limited(context: ApiContext) -> Readiness:
    with answer_within(DATABASE_LIMIT):
        return check_readiness(context)


def check_readiness(context: ApiContext) -> Readiness:
    result = Readiness()
    url = context.database_url
    result.checks["database"] = _run(lambda: _database(url))
    database_ok = result.checks["database"].status == "pass"
    needs_db: dict[str, Callable[[], Check]] = {
        "schema": lambda: _schema(url),
        "safety_system": lambda: _safety(context),
        "emergency_stop": lambda: _emergency_stop(context),
        "workers": lambda: _workers(context),
    }
    result.checks["redis"] = _run(lambda: _redis(context.settings.redis_url))
    for name, check in needs_db.items():
        skipped = Check("fail", "not checked: the database is unavailable")
        result.checks[name] = _run(check) if database_ok else skipped
    return result


def _run(check: Callable[[], Check]) -> Check:
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - a crashed check is a failed check, with its reason
        # Our own errors (RuntimeError) already say what is wrong; others get their type.
        text = str(exc) if isinstance(exc, RuntimeError) else describe_error(exc)
        return Check("fail", (text.strip().splitlines() or ["?"])[0])


def _database(url: str) -> Check:
    check_database(url)
    return Check("pass", f"{redacted(url)} answers")


def _schema(url: str) -> Check:
    current, head = current_revision(url), head_revision()
    if current != head:
        return Check("fail", schema_advice(current, head))
    return Check("pass", f"at revision {head}")


def _redis(url: str | None) -> Check:
    if not url:
        return Check("pass", "not configured (embedded mode: work runs in-process)")
    import redis

    client = redis.Redis.from_url(
        url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
    )
    try:
        client.ping()
    finally:
        client.close()
    return Check("pass", "answers PING")


def _safety(context: ApiContext) -> Check:
    status = context.safety().system_status()
    if not status.active:
        return Check("fail", "; ".join(status.problems) or "the safety system is not active")
    return Check("pass", "active")


def _emergency_stop(context: ApiContext) -> Check:
    state = context.emergency_stop().state()
    # Engaged is a warning, not a failure: see the module's docstring for why.
    return Check("warn" if state.stops else "pass", state.describe())  # a key left in Redis too


def _workers(context: ApiContext) -> Check:
    if not context.settings.redis_url:
        return Check("pass", "embedded mode: actions run in-process, no separate workers")
    now = utcnow()
    with context.session_factory() as session:
        beats = list(session.scalars(select(WorkerHeartbeatRow)))
    stale = dt.timedelta(seconds=context.settings.heartbeat_stale_seconds)
    fresh = [b for b in beats if now - b.last_seen <= stale]
    if not fresh:
        seen = f" ({len(beats)} stale)" if beats else ""
        return Check("warn", f"no worker heartbeat in the last {stale.total_seconds():g} s{seen}")
    newest = max(b.last_seen for b in fresh)
    ago = int((now - newest).total_seconds())
    return Check("pass", f"{len(fresh)} worker(s) alive, last heartbeat {ago}s ago")
