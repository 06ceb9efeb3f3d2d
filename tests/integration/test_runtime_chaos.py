"""Chaos on the distributed runtime: workers SIGKILLed mid-batch, Redis flushed, workers scaled
to zero and back. Afterwards every action ran exactly once, or is in a truthful failed state;
none is lost, none left executing, none ran twice (counted at a proxy in front of moto)."""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import select

from backend.config import Settings, reset_settings_cache
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.models import ActionRow
from backend.runtime.celery_app import celery_config
from tests.integration.execution_fleet import Fleet, seed_fleet
from tests.integration.execution_support import PACK, scan_and_plan
from tests.support.servers import free_port
from tests.support.staged_fault_proxy import StagedFaultProxy, stop_calls
from tests.support.tcp_proxy import TcpProxy
from tests.support.workers import Workers, private_redis, wait_until

pytestmark = [pytest.mark.moto_server]
IDLE = 20


@dataclass
class SlowStops(StagedFaultProxy):
    """Each StopInstances takes a moment, so that a kill lands mid-action more often."""

    pause: float = 0.6

    def take(self, region: str, service: str, body: bytes):  # type: ignore[no-untyped-def]
        if b"Action=StopInstances" in body:
            time.sleep(self.pause)
        return super().take(region, service, body)


@dataclass
class World:
    fleet: Fleet
    proxy: SlowStops
    workers: Workers
    broker: redis.Redis


@pytest.fixture
def world(
    moto_url: str,
    postgres_url: str,
    broker: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[World]:
    pack_file = tmp_path / "pack.yml"
    pack_file.write_text(PACK)
    for name, value in {
        "FINOPS_POLICY_PATHS": str(pack_file),
        "FINOPS_DRY_RUN": "false",
        "FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN": "100",
        "FINOPS_MAX_ACTIONS_PER_HOUR": "1000",
        "FINOPS_ACTION_DEADLINE_MINUTES": "0.05",  # 3 s: a stuck action is found quickly
        "FINOPS_HEARTBEAT_STALE_SECONDS": "3",
        "FINOPS_TASK_VISIBILITY_TIMEOUT_SECONDS": "10",
    }.items():
        monkeypatch.setenv(name, value)
    reset_settings_cache()
    fleet = seed_fleet(moto_url, idle=IDLE)
    scan_and_plan(requested_by="planner")
    proxy = SlowStops(upstream=moto_url).start()
    assert isinstance(proxy, SlowStops)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    reset_settings_cache()
    pool = Workers(tmp_path)
    yield World(fleet, proxy, pool, broker)
    pool.stop_all()
    proxy.stop()


def rows() -> list[ActionRow]:
    with session_scope() as session:
        return list(session.scalars(select(ActionRow).where(ActionRow.action == "stop")))


def executing_worker_pid(pool: Workers, timeout: float) -> int | None:
    """The pid of a live worker holding an executing action (claimed_by is host:pid)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {p.pid for p in pool.alive()}
        held = [r.claimed_by for r in rows() if r.state == "executing" and r.claimed_by]
        pids = [int(c.rsplit(":", 1)[1]) for c in held]
        if any(pid in alive for pid in pids):
            return next(pid for pid in pids if pid in alive)
        time.sleep(0.05)
    return None


def settle(world: World, timeout: float = 150) -> None:
    """Tick the reconciler (beat's job) until nothing is approved or executing."""
    from backend.runtime.celery_app import app

    def done() -> bool:
        if not any(r.state in ("approved", "executing") for r in rows()):
            return True
        app.send_task("finops.reconcile")
        return False

    try:
        wait_until(done, timeout, "every action to finish", every=2.0)
    except AssertionError:
        print(world.workers.logs())
        raise


def assert_exactly_once_or_truthful(world: World) -> dict[str, int]:
    calls = stop_calls(world.proxy)
    states: Counter[str] = Counter()
    for row in rows():
        states[row.state] += 1
        sent = calls[row.resource_id]
        assert sent <= 1, f"{row.resource_id} was stopped {sent} times"
        if row.state == "succeeded":
            assert sent == 1 and world.fleet.instance_state(row.resource_id) == "stopped"
            assert row.pre_state and row.post_state
        elif row.state == "blocked":
            assert sent == 0, (row.id, row.safety_verdict)  # prod and opted-out: never run
        else:
            assert row.state == "failed", (row.id, row.state, row.error)
            assert "lost mid-action" in (row.error or ""), row.error
    assert world.fleet.instance_state(world.fleet.prod) == "running"
    assert AuditLogger().verify().ok
    return dict(states)


def test_sigkill_workers_mid_batch_and_flush_redis(world: World) -> None:
    from backend.runtime.celery_app import app

    assert len([r for r in rows() if r.state == "approved"]) == IDLE
    # scaled to zero: the dispatch waits in the queue, nothing runs
    app.send_task("finops.dispatch_due")
    time.sleep(1.0)
    assert stop_calls(world.proxy) == Counter()
    chaos = random.Random(7)
    world.workers.start()
    world.workers.start()
    killed_mid_action = 0
    for round_ in range(5):
        if round_ < 3:
            # kill the worker that holds an action right now, mid-action
            pid = executing_worker_pid(world.workers, timeout=20)
            victim = next((p for p in world.workers.alive() if p.pid == pid), None)
            if victim is not None:
                world.workers.kill(victim)
                killed_mid_action += 1
        else:
            time.sleep(chaos.uniform(0.3, 1.2))
            alive = world.workers.alive()
            if alive:
                world.workers.kill(chaos.choice(alive))
        if round_ == 3:
            world.broker.flushdb()  # the runbook's recovery step: queues and marks are gone
        world.workers.start()
    assert killed_mid_action >= 2
    settle(world)
    states = assert_exactly_once_or_truthful(world)
    assert states["blocked"] == 2  # the prod and the opted-out instance, at planning
    assert states["succeeded"] + states.get("failed", 0) == IDLE
    reconciled = [
        e.outcome for e in AuditLogger().events("1h") if "reconciled" in (e.details or {})
    ]
    assert reconciled, "a worker killed mid-action leaves an action for the reconciler"
    print(f"after 5 kills and a flush: {states}; reconciled after a lost worker: {reconciled}")


def test_postgresql_stopped_mid_run(world: World, postgres_url: str) -> None:
    """The workers' database goes away mid-batch (a proxy cuts it; the test keeps its own
    line): nothing runs on AWS without its record, and the run resumes when it is back."""
    from backend.runtime.celery_app import app

    proxy, through = TcpProxy.in_front_of(postgres_url)
    try:
        for _ in range(2):
            world.workers.start(env={"DATABASE_URL": through})
        app.send_task("finops.dispatch_due")
        wait_until(
            lambda: sum(r.state == "succeeded" for r in rows()) >= 2, 60, "the batch to start"
        )
        proxy.cut()
        time.sleep(5)
        assert any(r.state in ("approved", "executing") for r in rows()), "finished too soon"
        proxy.restore()
        settle(world)
    finally:
        proxy.close()
    states = assert_exactly_once_or_truthful(world)
    assert states["succeeded"] + states.get("failed", 0) == IDLE
    # every instance stopped in AWS has its action's record: pre-state and outcome
    by_instance = {r.resource_id: r for r in rows()}
    for iid in world.fleet.idle_ids:
        if world.fleet.instance_state(iid) in ("stopping", "stopped"):
            record = by_instance[iid]
            assert record.pre_state and record.state in ("succeeded", "failed"), record.id


def test_redis_restarted_mid_run(world: World) -> None:
    """The broker dies (SIGKILL, nothing on disk) and comes back empty: approved actions are
    queued again from PostgreSQL by the reconciler, and each runs once."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    sender = Celery("chaos-sender", set_as_current=False)
    sender.conf.update(celery_config(Settings(redis_url=url)))
    with private_redis(port) as first:
        for _ in range(2):
            world.workers.start(env={"REDIS_URL": url})
        sender.send_task("finops.dispatch_due", queue="scans")
        wait_until(
            lambda: sum(r.state == "succeeded" for r in rows()) >= 2, 60, "the batch to start"
        )
        first.kill()
        first.wait(10)
    time.sleep(2)
    with private_redis(port):
        assert any(r.state == "approved" for r in rows()), "finished before the restart"

        def done() -> bool:
            if not any(r.state in ("approved", "executing") for r in rows()):
                return True
            sender.send_task("finops.reconcile", queue="scans")
            return False

        try:
            wait_until(done, 150, "every action to finish after the restart", every=2.0)
        except AssertionError:
            print(world.workers.logs())
            raise
    states = assert_exactly_once_or_truthful(world)
    assert states["succeeded"] + states.get("failed", 0) == IDLE
