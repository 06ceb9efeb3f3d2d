"""Queue approved actions as tasks: from the scheduler's tick, a plan, or a person's request.

PostgreSQL says what is due (approved, past its notice, approval not expired); Redis only
remembers for a while what was already queued, so a tick does not queue an action twice.
When Redis is flushed or restarted that memory is gone with the queue itself, and the next
tick queues every due action again: nothing approved is lost. A second copy of a message
that did survive is harmless: the claim in PostgreSQL lets one execution through.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from sqlalchemy import select

from backend.core.action_engine import ActionEngine, RunReport
from backend.core.database import session_scope
from backend.core.models import ActionRow
from backend.core.repositories import due_conditions
from backend.core.types import utcnow
from backend.runtime.celery_app import ACTIONS, app
from backend.runtime.services import WorkerServices, services

QUEUED_KEY = "finops:queued:{}"
CONTROL_DEADLINE = 10.0  # seconds for a broadcast or a purge; kombu retries a lost broker
T = TypeVar("T")


def bounded(call: Callable[[], T], seconds: float | None = None) -> T:
    """call()'s answer within `seconds`, or TimeoutError: kombu reconnects and retries a
    broker that does not answer for far longer than an operator waits for the brake. A
    daemon thread, so one left waiting never holds the process at exit."""
    seconds = seconds or CONTROL_DEADLINE
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=run, name="finops-broker-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"Redis did not answer in {seconds:g} s")
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def due_ids() -> list[int]:
    now = utcnow()
    with session_scope() as session:
        query = select(ActionRow.id).where(*due_conditions(now))
        return list(session.scalars(query.order_by(ActionRow.id)))


def _redis(svc: WorkerServices) -> redis.Redis:
    assert svc.settings.redis_url, "the distributed runtime needs REDIS_URL"
    return redis.Redis.from_url(svc.settings.redis_url, socket_timeout=2)


def queue_run(
    engine: ActionEngine,
    ids: list[int] | None,
    *,
    dry_run: bool,
    triggered_by: str,
    svc: WorkerServices | None = None,
) -> RunReport:
    """Start a run for the due actions not queued yet (or these ids) and queue each one."""
    svc = svc or services()
    client = _redis(svc)
    wanted = due_ids() if ids is None else ids
    fresh = [i for i in wanted if not client.exists(QUEUED_KEY.format(i))]
    report = engine.start_run(fresh, dry_run=dry_run, triggered_by=triggered_by)
    if report.stopped_by or not report.batch:
        if report.run_id is not None:
            engine.finish_run(report)
        return report
    ttl = svc.settings.task_visibility_timeout_seconds
    for action_id in report.batch:
        if client.set(QUEUED_KEY.format(action_id), report.run_id or 0, nx=True, ex=ttl):
            app.send_task(
                "finops.execute_action",
                args=(action_id, report.run_id, dry_run),
                queue=ACTIONS,
                routing_key=ACTIONS,
            )
    return report


def forget_queued(svc: WorkerServices, action_id: int) -> None:
    # On a Redis error it expires on its own; the claim guards against a second run meanwhile.
    with contextlib.suppress(redis.RedisError):
        _redis(svc).delete(QUEUED_KEY.format(action_id))


def _purge_actions() -> int:
    with app.connection_for_write() as conn:
        return int(conn.default_channel.queue_purge(ACTIONS) or 0)  # type: ignore[attr-defined]


class CeleryDispatcher:
    """AutoRemediationEngine's dispatcher in the distributed mode: queue, do not run."""

    name = "celery"

    def run(
        self, engine: ActionEngine, ids: list[int] | None, *, dry_run: bool, triggered_by: str
    ) -> RunReport:
        return queue_run(engine, ids, dry_run=dry_run, triggered_by=triggered_by)

    def halt(self) -> str:
        """On an emergency stop: tell every worker at once, and drop the queued actions
        (they stay approved in PostgreSQL and are queued again after the resume)."""
        notes: list[str] = []
        try:
            replies: list[dict[str, Any]] = bounded(
                lambda: (
                    app.control.broadcast("finops_emergency_stop", reply=True, timeout=1.0) or []
                )
            )
            notes.append(f"{len(replies)} worker(s) acknowledged the stop broadcast")
        except TimeoutError as exc:  # a paused Redis: a purge would wait as long again
            return (
                f"workers NOT told and queue not purged ({exc}); "
                "each worker checks the stop before every claim"
            )
        except Exception as exc:  # noqa: BLE001 - the database stop holds regardless
            notes.append(f"broadcast failed ({exc}); workers still check before each claim")
        try:
            dropped = bounded(_purge_actions)
            notes.append(f"{dropped} queued action task(s) dropped (still approved in the db)")
            client = _redis(services())
            for key in client.scan_iter(QUEUED_KEY.format("*")):
                client.delete(key)  # so that the resume queues them again at once
        except Exception as exc:  # noqa: BLE001
            notes.append(f"queue not purged ({exc}); queued tasks will find the stop engaged")
        return "; ".join(notes)

    def resume(self) -> str:
        """After a release: every worker consumes the actions queue again now. Best effort:
        the scheduler's reconcile tick sends the same broadcast as a backstop."""
        try:
            replies: list[dict[str, Any]] = bounded(
                lambda: app.control.broadcast("finops_resume", reply=True, timeout=1.0) or []
            )
        except Exception as exc:  # noqa: BLE001 - the release stands; the tick catches up
            return (
                f"resume broadcast failed ({exc}): the workers take up actions again at the "
                "scheduler's next reconcile tick, or restart them"
            )
        return f"{len(replies)} worker(s) acknowledged the resume broadcast"
