"""The Celery tasks: each takes ids, calls a service, and is safe to run twice.

The base task owns what every task needs around the service: the log context (task name
and id), and the retry policy for a database that is down (the task waits and tries again;
nothing runs on AWS without its record). Workers are told of an emergency stop three ways:
the database (the record, read before every claim), a Redis key (the fast path), and a
broadcast (`finops_emergency_stop`) that drops this worker's pending work at once.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import structlog
from celery import Task
from celery.signals import worker_process_init, worker_ready
from celery.worker.control import control_command
from sqlalchemy.exc import OperationalError

from backend.core.database import DatabaseUnavailableError, session_scope
from backend.core.emergency_stop import EmergencyStopEngaged
from backend.core.types import utcnow
from backend.domain.policy.model import Schedule
from backend.runtime import cycles, heartbeat
from backend.runtime import reconcile as reconciler
from backend.runtime.celery_app import ACTIONS, QUEUES, SCANS, app
from backend.runtime.dispatch import forget_queued, queue_run
from backend.runtime.services import reset, services

log = structlog.get_logger(__name__)


class FinopsTask(Task[Any, Any]):
    """Log context per task, and patience with a database that is down."""

    autoretry_for = (DatabaseUnavailableError, OperationalError)
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = None  # a database outage is waited out; the action stays recorded

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        structlog.contextvars.bind_contextvars(task=self.name, task_id=self.request.id)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            structlog.contextvars.unbind_contextvars("task", "task_id")


@app.task(name="finops.start_cycle", base=FinopsTask)
def start_cycle(
    policies: list[str] | None = None,
    cron: str | None = None,
    timezone: str = "UTC",
    slot: str | None = None,
    fired_at: str | None = None,
) -> int | None:
    """Open the cycle for this slot (once) and queue its scan parts; nothing when every
    policy of the cycle is disabled, paused or overridden now, or when the scheduled run
    it was sent for (`fired_at`, from beat) is already past its run window."""
    svc = services()
    now = utcnow()
    runnable = {p.name for p in svc.pack().enabled()}
    if policies and not runnable.intersection(policies):
        log.info("cycle skipped: its policies are held", policies=policies)
        return None
    if slot is None and cron:
        schedule = Schedule(cron, timezone)
        # A message from an older beat has no fire time: the latest one is the best guess.
        fired = dt.datetime.fromisoformat(fired_at) if fired_at else None
        fired = fired or schedule.latest_at_or_before(now)
        if cycles.too_late(svc, schedule, list(policies or []), fired, now):
            return None
        slot = schedule.slot(fired)
    slot = slot or f"manual:{uuid.uuid4()}"
    parts = cycles.parts_for(svc.settings)
    with session_scope() as session:
        cycle_id = cycles.open_cycle(session, list(policies or []), slot, parts, now)
    if cycle_id is None:
        log.info("cycle slot already started", slot=slot, policies=policies)
        return None
    for part in parts:
        scan_part.apply_async((cycle_id, part.account, part.region), queue=SCANS)
    return cycle_id


@app.task(name="finops.scan_part", base=FinopsTask)
def scan_part(cycle_id: int, account: str, region: str) -> None:
    svc = services()
    if cycles.scan_part(svc, cycle_id, cycles.Part(account, region)):
        plan_cycle.apply_async((cycle_id,), queue=SCANS)


@app.task(name="finops.plan_cycle", base=FinopsTask)
def plan_cycle(cycle_id: int) -> int:
    planned = cycles.plan_cycle(services(), cycle_id)
    dispatch_due.apply_async(queue=SCANS)
    return planned


@app.task(name="finops.dispatch_due", base=FinopsTask)
def dispatch_due(triggered_by: str = "scheduler") -> list[int]:
    """Queue what is approved and due. Not in dry-run: a dry run is asked for, not scheduled."""
    svc = services()
    if svc.settings.dry_run:
        return []
    try:
        report = queue_run(svc.engine(), None, dry_run=False, triggered_by=triggered_by, svc=svc)
    except EmergencyStopEngaged:
        return []
    return report.batch


@app.task(name="finops.execute_action", base=FinopsTask)
def execute_action(action_id: int, run_id: int | None, dry_run: bool) -> dict[str, Any]:
    svc = services()
    try:
        # Inside: a task that fails to start (a broken policy pack, the database down) must
        # not leave the queued mark, which keeps the action from being queued again.
        engine = svc.engine()
        with heartbeat.executing(action_id):
            outcome = engine.execute_one(action_id, run_id, dry_run=dry_run)
    finally:
        forget_queued(svc, action_id)
    log.info("action done", action=action_id, result=outcome.result)
    return {"action_id": outcome.action_id, "result": outcome.result, "detail": outcome.detail}


@app.task(name="finops.reconcile", base=FinopsTask)
def reconcile() -> dict[str, Any]:
    """The scheduler's tick: settle stuck actions, restart lost cycles, queue what is due."""
    svc = services()
    now = utcnow()
    settled = {i: reconciler.reconcile(svc, i) for i in reconciler.stuck_actions(svc, now)}
    restarted = []
    older = now - dt.timedelta(seconds=svc.settings.task_visibility_timeout_seconds)
    with session_scope() as session:
        for cycle in cycles.stale_cycles(session, older):
            cycle.parts_done, cycle.updated_at = 0, now
            restarted.append((cycle.id, list(cycle.details.get("parts", []))))
    for cycle_id, parts in restarted:
        for account, region in parts:
            scan_part.apply_async((cycle_id, account, region), queue=SCANS)
    if not svc.emergency.is_engaged():
        # workers that stopped consuming actions on a stop broadcast take them up again
        app.control.broadcast("finops_resume")
    queued = dispatch_due.run()
    send_pending_notifications.apply_async()
    return {"stuck": settled, "cycles_restarted": [c for c, _ in restarted], "queued": queued}


@app.task(name="finops.send_pending_notifications", base=FinopsTask)
def send_pending_notifications() -> int:
    from backend.core.notification_service import NotificationService

    return len(NotificationService().retry_pending())


@control_command()
def finops_emergency_stop(state: Any, **kwargs: Any) -> dict[str, str]:
    """Broadcast by the emergency stop: stop consuming actions now. The next claim would
    refuse anyway (database and Redis); this saves the round trips of the queued ones."""
    state.consumer.cancel_task_queue(ACTIONS)
    return {"ok": "stopped consuming actions"}


@control_command()
def finops_resume(state: Any, **kwargs: Any) -> dict[str, str]:
    if not state.consumer.task_consumer.consuming_from(ACTIONS):
        state.consumer.add_task_queue(ACTIONS)
    return {"ok": "consuming actions again"}


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    reset()
    heartbeat.start(services().settings.heartbeat_interval_seconds, list(QUEUES))


@worker_ready.connect
def _ready(**_: Any) -> None:
    heartbeat.start(services().settings.heartbeat_interval_seconds, list(QUEUES))
