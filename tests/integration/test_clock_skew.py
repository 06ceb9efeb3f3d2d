"""A host whose clock is off stamps times on the database's clock (backend/core/db_clock.py).

In process: this host's clock made two hours slow. For real: a `finops worker` run under
libfaketime two hours slow claims and executes actions, and the hourly limit, the status of
its heartbeat and the due query of the other processes read its stamps as they should.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select, text

from backend.core import db_clock, types
from backend.core.auto_remediation_engine import AutoRemediationEngine
from backend.core.database import session_scope
from backend.core.models import ActionRow, WorkerHeartbeatRow
from backend.runtime.celery_app import app
from tests.integration.execution_fleet import Fleet, live_fleet
from tests.integration.execution_support import engine
from tests.support.workers import wait_until, workers

pytestmark = [pytest.mark.moto_server]

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
TWO_HOURS = dt.timedelta(hours=2)


@pytest.fixture(autouse=True)
def measured_afresh() -> Iterator[None]:
    db_clock.forget()
    yield
    db_clock.forget()


def database_now() -> dt.datetime:
    with session_scope() as session:
        value = session.scalar(text("SELECT clock_timestamp()"))
    assert isinstance(value, dt.datetime)
    return value


def test_a_slow_host_reads_the_database_clock(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def slow() -> dt.datetime:
        return dt.datetime.now(dt.UTC) - TWO_HOURS

    monkeypatch.setattr(types, "host_now", slow)
    monkeypatch.setattr(db_clock, "host_now", slow)
    assert abs(types.utcnow() - database_now()) > dt.timedelta(hours=1)  # before a checkout
    reference = database_now()  # this checkout measures the offset
    assert abs(types.utcnow() - reference) < dt.timedelta(seconds=1)
    assert abs(types.CLOCK_OFFSET.delta - TWO_HOURS) < dt.timedelta(seconds=1)


def test_a_host_in_step_keeps_its_own_clock(postgres_url: str) -> None:
    database_now()
    assert types.CLOCK_OFFSET.delta == dt.timedelta(0)  # the measure's noise is not an offset


@pytest.fixture
def fleet(
    moto_url: str,
    postgres_url: str,
    broker: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Fleet:
    if not Path(LIBFAKETIME).exists():
        pytest.fail(f"{LIBFAKETIME} is missing: apt-get install faketime (see the README)")
    return live_fleet(moto_url, monkeypatch, tmp_path, 4, MAX_ACTIONS_PER_HOUR="3")


def test_a_worker_two_hours_slow_is_counted_in_the_hour_and_is_not_stale(
    fleet: Fleet, broker: redis.Redis, tmp_path: Path
) -> None:
    with session_scope() as session:
        approved = (ActionRow.action == "stop", ActionRow.state == "approved")
        stops = list(session.scalars(select(ActionRow).where(*approved)))
        assert len(stops) == 4  # the idle ones (the prod and the opted-out one are blocked)
        held = stops[-1]
        held.not_before = database_now() + dt.timedelta(days=1)  # not due: three are
        held_id = held.id
    slow = {
        "LD_PRELOAD": LIBFAKETIME,
        "FAKETIME": "-2h",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    with workers(tmp_path, 0) as pool:
        pool.start(env=slow)

        def heartbeat() -> WorkerHeartbeatRow | None:
            with session_scope() as session:
                return session.scalars(select(WorkerHeartbeatRow)).first()

        wait_until(lambda: heartbeat() is not None, 60, "the slow worker's heartbeat")
        beat = heartbeat()
        assert beat is not None
        assert abs(beat.last_seen - database_now()) < dt.timedelta(minutes=1), beat.last_seen
        assert abs(beat.details["clock_offset_seconds"] - TWO_HOURS.total_seconds()) < 5
        status = AutoRemediationEngine().get_status()
        assert status.workers and not any("STALE" in w for w in status.workers), status.workers

        # the slow worker finds the planner's approvals due, claims and runs them...
        app.send_task("finops.dispatch_due")

        def succeeded() -> int:
            with session_scope() as session:
                rows = session.scalars(select(ActionRow).where(ActionRow.action == "stop"))
                return sum(r.state == "succeeded" for r in rows)

        try:
            wait_until(lambda: succeeded() == 3, 90, "three stops on the slow worker")
        except AssertionError:
            print(pool.logs())
            raise
        assert "Traceback" not in pool.logs(), pool.logs()

    # ...and its claims are in the last hour for the rest of the system: the limit is full
    with session_scope() as session:
        row = session.get(ActionRow, held_id)
        assert row is not None
        row.not_before = None
    report = engine().start_run(dry_run=False)
    assert report.batch == [] and "hour" in str(report.stopped_by), report
    assert os.environ.get("FAKETIME") is None  # only the worker was slow
