"""Concurrency on PostgreSQL: two engines on one batch, and an emergency stop mid-batch.

Two ActionEngines (two workers) execute the same approved batch at the same moment: each
action is claimed once, succeeds once, and each instance is stopped once (counted at the
proxy in front of moto). An emergency stop engaged from another thread while a batch runs:
no action is claimed and no change reaches AWS after `engage()` returns, and the action that
was under way is finished, handed back untouched, or failed with its record.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from backend.config import reset_settings_cache
from backend.core.action_engine import RunReport
from backend.core.audit_chain import AuditEvent
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop
from backend.core.models import ActionRow, ActionRunRow
from backend.domain.resources import ResourceKind
from backend.providers.aws.operations import OPERATIONS
from tests.integration.execution_fleet import Fleet, seed_fleet
from tests.integration.execution_support import engine, scan_and_plan
from tests.support.staged_fault_proxy import StagedFaultProxy, stop_calls

pytestmark = [pytest.mark.moto_server, pytest.mark.postgres]

IDLE = 6
TIMEOUT = 120.0


@dataclass
class World:
    fleet: Fleet
    proxy: StagedFaultProxy
    stops: dict[int, str]  # action id -> instance id, in execution (id) order


@pytest.fixture
def world(moto_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "100")
    reset_settings_cache()
    fleet = seed_fleet(moto_url, idle=IDLE)
    scan_and_plan()
    rows = actions()
    stops = {rows[iid].id: iid for iid in sorted(fleet.idle_ids, key=lambda i: rows[i].id)}
    assert all(rows[iid].state == "approved" for iid in fleet.idle_ids)  # stop-idle is auto
    proxy = StagedFaultProxy(upstream=moto_url).start()
    assert isinstance(proxy, StagedFaultProxy)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    reset_settings_cache()
    yield World(fleet, proxy, stops)
    proxy.stop()


def actions() -> dict[str, ActionRow]:
    with session_scope() as session:
        return {r.resource_id: r for r in session.scalars(select(ActionRow))}


def rows_by_id() -> dict[int, ActionRow]:
    with session_scope() as session:
        return {r.id: r for r in session.scalars(select(ActionRow))}


def action_events() -> list[AuditEvent]:
    return [e for e in AuditLogger().events("1h") if e.subject_type == "action"]


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any], list[BaseException]]:
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(target())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results, errors


# --- two engines, one batch -----------------------------------------------------------------


def test_two_engines_on_one_batch_claim_and_stop_each_instance_once(world: World) -> None:
    ids = list(world.stops)
    barrier = threading.Barrier(2)

    def worker(name: str) -> Callable[[], RunReport]:
        def go() -> RunReport:
            eng = engine(worker=name)
            barrier.wait(timeout=30)
            return eng.execute(ids, dry_run=False, triggered_by=name)

        return go

    runs = [in_thread(worker(name)) for name in ("worker-a", "worker-b")]
    for thread, _, _ in runs:
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    assert [e for _, _, errors in runs for e in errors] == []
    reports: list[RunReport] = [r for _, results, _ in runs for r in results]
    assert len(reports) == 2 and all(r.stopped_by is None for r in reports)

    succeeded = Counter(o.action_id for r in reports for o in r.outcomes if o.result == "succeeded")
    assert succeeded == Counter(ids), [r.outcomes for r in reports]
    others = {o.result for r in reports for o in r.outcomes if o.result != "succeeded"}
    assert others <= {"skipped"}

    rows = rows_by_id()
    for action_id in ids:
        row = rows[action_id]
        assert row.state == "succeeded", (action_id, row.state, row.error)
        assert row.attempts == 1, (action_id, row.attempts)
        assert row.claimed_by in ("worker-a", "worker-b")
        assert row.pre_state and row.pre_state["state"] == "running"

    events = action_events()
    for kind in ("claimed", "succeeded"):
        per_action = Counter(int(e.subject_id) for e in events if e.outcome == kind)
        assert {i: per_action[i] for i in ids} == dict.fromkeys(ids, 1), kind
    claimants = {
        int(e.subject_id): e.actor for e in events if e.outcome in ("claimed", "succeeded")
    }
    assert all(claimants[i] == rows[i].claimed_by for i in ids)

    assert stop_calls(world.proxy) == Counter(world.stops.values())
    assert all(world.fleet.instance_state(i) == "stopped" for i in world.stops.values())
    assert world.fleet.instance_state(world.fleet.prod) == "running"
    with session_scope() as session:
        assert len(session.scalars(select(ActionRunRow)).all()) == 2
    assert AuditLogger().verify().ok


# --- the emergency stop while a batch runs ------------------------------------------------


@dataclass
class Engaged:
    event_id: int  # the emergency_stop audit event
    log_length: int  # requests the proxy had seen when engage() returned


def engage_now(proxy: StagedFaultProxy) -> Engaged:
    EmergencyStop().engage("race test: stop everything", "oncall")
    stops = AuditLogger().events("1h", event_types=frozenset({"emergency_stop"}))
    assert len(stops) == 1 and stops[0].outcome == "engaged"
    return Engaged(stops[0].id, len(proxy.log))


@pytest.mark.parametrize("moment", ["before-the-change", "after-the-change", "between-actions"])
def test_an_emergency_stop_mid_batch_starts_nothing_after_it(world: World, moment: str) -> None:
    ids = list(world.stops)
    first, first_instance = ids[0], world.stops[ids[0]]
    engaged: list[Engaged] = []

    if moment == "between-actions":
        # engage from another thread when the engine asks before its second claim
        class EngagingStop(EmergencyStop):
            claims = 0

            def check(self, step: str = "") -> None:
                if step == "the next claim":
                    self.claims += 1
                    if self.claims == 2:
                        thread, results, errors = in_thread(lambda: engage_now(world.proxy))
                        thread.join(30)
                        assert not errors, errors
                        engaged.extend(results)
                super().check(step)

        eng = engine(worker="worker-a", emergency=EngagingStop())
        report = eng.execute(ids, dry_run=False, triggered_by="test")
    else:
        # pause the first action inside the operation, engage from this thread, resume it
        op = OPERATIONS[("stop", ResourceKind.EC2_INSTANCE)]
        step = "execute" if moment == "before-the-change" else "verify"
        original = getattr(op, step)
        paused, resume = threading.Event(), threading.Event()

        def pausing(*args: Any) -> Any:
            if not paused.is_set():
                paused.set()
                assert resume.wait(60)
            return original(*args)

        vars(op)[step] = pausing  # this instance only; removed below
        try:
            eng = engine(worker="worker-a")
            thread, results, errors = in_thread(
                lambda: eng.execute(ids, dry_run=False, triggered_by="test")
            )
            assert paused.wait(60), "the first action never reached the operation"
            engaged.append(engage_now(world.proxy))
            resume.set()
            thread.join(TIMEOUT)
        finally:
            resume.set()
            del vars(op)[step]
        assert not thread.is_alive()
        assert not errors, errors
        report = results[0]

    assert len(engaged) == 1
    mark = engaged[0]
    assert report.stopped_by and "race test" in report.stopped_by

    # nothing started after engage() returned: no claim event, no change in AWS
    late_claims = [e for e in action_events() if e.id > mark.event_id and e.outcome == "claimed"]
    assert late_claims == []
    assert stop_calls(world.proxy, world.proxy.log[mark.log_length :]) == Counter()

    rows = rows_by_id()
    mid = rows[first]
    assert mid.state != "executing", "the action under way was left half-done"
    assert mid.attempts == 1
    if moment == "before-the-change":
        # nothing had changed: handed back untouched, to run again once the stop is lifted
        assert mid.state == "approved"
        assert world.fleet.instance_state(first_instance) == "running"
        assert stop_calls(world.proxy)[first_instance] == 0
        handed_back = [e for e in action_events() if int(e.subject_id) == first]
        assert handed_back[-1].outcome == "approved"
        assert handed_back[-1].details.get("changed") is False
    else:
        # the change was made before the stop: it finishes and says so
        assert mid.state == "succeeded", (mid.state, mid.error)
        assert mid.pre_state and mid.post_state
        assert world.fleet.instance_state(first_instance) == "stopped"
    for action_id in ids[1:]:
        row = rows[action_id]
        assert (row.state, row.attempts, row.claimed_by) == ("approved", 0, None), action_id
        assert world.fleet.instance_state(world.stops[action_id]) == "running"
    assert AuditLogger().verify().ok

    # once an admin lifts the stop, the rest run, and nothing runs twice
    EmergencyStop().release("admin", is_admin=True)
    again = engine(worker="worker-b").execute(ids, dry_run=False, triggered_by="test")
    assert again.stopped_by is None
    assert all(r.state == "succeeded" for i, r in rows_by_id().items() if i in world.stops)
    assert stop_calls(world.proxy) == Counter(world.stops.values())
    assert AuditLogger().verify().ok


def test_eight_engines_on_one_action_stop_it_once(world: World) -> None:
    """The sharpest claim race: every engine asks for the same action at the same moment."""
    action_id, instance = next(iter(world.stops.items()))
    barrier = threading.Barrier(8)

    def worker(name: str) -> Callable[[], RunReport]:
        def go() -> RunReport:
            eng = engine(worker=name)
            barrier.wait(timeout=30)
            return eng.execute([action_id], dry_run=False, triggered_by=name)

        return go

    runs = [in_thread(worker(f"worker-{n}")) for n in range(8)]
    for thread, _, _ in runs:
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    assert [e for _, _, errors in runs for e in errors] == []
    results = Counter(o.result for _, rs, _ in runs for r in rs for o in r.outcomes)
    assert results["succeeded"] == 1, results
    assert set(results) <= {"succeeded", "skipped"}
    row = rows_by_id()[action_id]
    assert (row.state, row.attempts) == ("succeeded", 1)
    outcomes = Counter(e.outcome for e in action_events() if int(e.subject_id) == action_id)
    assert (outcomes["claimed"], outcomes["succeeded"]) == (1, 1)
    assert stop_calls(world.proxy) == Counter({instance: 1})
    assert AuditLogger().verify().ok
