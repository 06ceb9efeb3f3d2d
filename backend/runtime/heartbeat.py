"""Each worker process says it is alive, in PostgreSQL, every few seconds.

The reconciler trusts an executing action to a worker whose heartbeat is fresh, and
`get_status()` / `/health/ready` list the workers by their last heartbeat. The name is the
one the engine claims actions with (host:pid), so a claim can be matched to its worker.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from backend.core.action_engine import worker_name
from backend.core.database import session_scope
from backend.core.models import WorkerHeartbeatRow
from backend.core.types import CLOCK_OFFSET, utcnow
from backend.core.upsert import upsert_rows

log = structlog.get_logger(__name__)
_started: dict[int, threading.Event] = {}  # per process id: forks start their own
# The actions this process is executing now, in its heartbeat: an action past its deadline
# that its (live) worker no longer lists was abandoned (say, its record could not be written).
# Counted, not a set: under a thread pool a redelivered copy of a task runs beside the first
# and, finding it claimed, returns at once; it must not take the first one off the list.
_executing: Counter[int] = Counter()
_executing_lock = threading.Lock()


@contextmanager
def executing(action_id: int) -> Iterator[None]:
    with _executing_lock:
        _executing[action_id] += 1
    try:
        yield
    finally:
        with _executing_lock:
            _executing[action_id] -= 1
            if _executing[action_id] <= 0:
                del _executing[action_id]


def executing_now() -> list[int]:
    with _executing_lock:
        return sorted(_executing)


def beat_once(queues: list[str]) -> None:
    with session_scope() as session:
        session.connection()  # checked out first: the clock's offset is measured then
        details = {
            "queues": queues,
            "executing": executing_now(),
            "clock_offset_seconds": round(CLOCK_OFFSET.delta.total_seconds(), 3),
        }
        row = {"worker": worker_name(), "last_seen": utcnow(), "details": details}
        upsert_rows(
            session,
            WorkerHeartbeatRow,
            [row],
            conflict_columns=["worker"],
            update_columns=["last_seen", "details"],
        )


def start(interval: float, queues: list[str]) -> threading.Event:
    """Start this process's heartbeat thread (once); set the returned event to stop it."""
    pid = os.getpid()
    if pid in _started:
        return _started[pid]
    stop = _started[pid] = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                beat_once(queues)
            except Exception as exc:  # noqa: BLE001 - a missed beat is visible as staleness
                log.warning("heartbeat not written", error=str(exc))
            stop.wait(interval)

    threading.Thread(target=run, name="finops-heartbeat", daemon=True).start()
    return stop
