"""Cycles: scan in parts (one task per account and region), then plan once, when all are in.

A cycle row in PostgreSQL counts its parts; the part that completes the count plans. Parts
are (account, region), not (account, region, kind): relations (a snapshot whose volume is
gone, a snapshot behind an AMI, an address on no instance) are judged within one account and
region on what that part saw, so its kinds are scanned together. Scanning a part twice (a
redelivered or re-enqueued task) is harmless: a scan only reads AWS and upserts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.core.action_planner import ActionPlanner
from backend.core.database import session_scope
from backend.core.models import PolicyCycleRow
from backend.core.scan_service import ScanService
from backend.core.schedule_window import window_length
from backend.core.types import utcnow
from backend.core.upsert import dialect_insert
from backend.domain.policy.model import PolicyPack, Schedule
from backend.domain.safety import Rule
from backend.runtime.services import WorkerServices

SCANNING, PLANNED = "scanning", "planned"
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Part:
    account: str  # "" for the caller's own account
    region: str


def cycle_key(policies: list[str]) -> str:
    """The cycle's name for these policies: readable when short, a digest when long."""
    joined = ",".join(sorted(policies)) or "*"
    return joined if len(joined) <= 128 else "sha1:" + hashlib.sha1(joined.encode()).hexdigest()


def parts_for(settings: Settings) -> list[Part]:
    accounts = settings.accounts or [""]
    return [Part(a, r) for a in accounts for r in settings.regions]


def open_cycle(
    session: Session, policies: list[str], slot: str, parts: list[Part], now: dt.datetime
) -> int | None:
    """The new cycle's id, or None when this (policies, slot) already started: a cron slot
    runs once, whoever fires it."""
    values = {
        "policy_name": cycle_key(policies),
        "slot": slot,
        "state": SCANNING,
        "parts_total": len(parts),
        "parts_done": 0,
        "started_at": now,
        "updated_at": now,
        "details": {"policies": sorted(policies), "parts": [[p.account, p.region] for p in parts]},
    }
    inserted = session.execute(
        dialect_insert(session, PolicyCycleRow)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["policy_name", "slot"])
        .returning(PolicyCycleRow.id)
    ).scalar()
    return int(inserted) if inserted is not None else None


def too_late(
    services: WorkerServices,
    schedule: Schedule,
    policies: list[str],
    fired: dt.datetime,
    now: dt.datetime,
) -> bool:
    """Whether a scheduled run arrives after its run window (a beat down over the weekend
    sends Friday's 19:00 stop on Monday morning): then it is skipped, logged and audited,
    as the planner would refuse its policies anyway; a cycle is not even opened."""
    late = now - fired
    window = window_length(services.settings)
    if late <= window:
        return False
    slot = schedule.slot(fired)
    reason = (
        f"{Rule.SCHEDULE_WINDOW.value}: scheduled run {slot} arrived {late} late, past its "
        f"{window.total_seconds() / 60:g}-minute run window; skipped, the next run is "
        f"{schedule.next_after(now).isoformat()}"
    )
    log.warning("scheduled cycle skipped: too late", slot=slot, policies=policies, late=str(late))
    with session_scope() as session:
        services.audit.record(
            "safety_verdict",
            subject_type="cycle",
            subject_id=f"{cycle_key(policies)} {slot}",
            actor="schedule",
            outcome="blocked",
            details={
                "stage": "schedule",
                "summary": reason,
                "slot": slot,
                "fired_at": fired.isoformat(),
                "policies": sorted(policies),
            },
            session=session,
        )
    return True


def restrict(pack: PolicyPack, names: list[str]) -> PolicyPack:
    """The cycle's policies among the enabled ones (all of them when `names` is empty)."""
    wanted = set(names)
    return PolicyPack(tuple(p for p in pack.enabled() if not wanted or p.name in wanted))


def scan_part(services: WorkerServices, cycle_id: int, part: Part) -> bool:
    """Scan one part; True when it was the last part in, and the cycle is now to be planned."""
    with session_scope() as session:
        cycle = session.get(PolicyCycleRow, cycle_id)
        if cycle is None or cycle.state != SCANNING:
            return False  # finished already (a duplicate delivery): nothing to do
        names = list(cycle.details.get("policies", []))
    pack = restrict(services.pack(), names)
    ScanService(services.settings, clients=services.clients).run(
        pack=pack, regions=[part.region], accounts=[part.account] if part.account else []
    )
    with session_scope() as session:
        # One atomic increment: exactly one part sees the count complete.
        done = session.execute(
            update(PolicyCycleRow)
            .where(PolicyCycleRow.id == cycle_id, PolicyCycleRow.state == SCANNING)
            .values(parts_done=PolicyCycleRow.parts_done + 1, updated_at=utcnow())
            .returning(PolicyCycleRow.parts_done, PolicyCycleRow.parts_total)
        ).first()
        if done is None or done[0] < done[1]:
            return False
        session.execute(
            update(PolicyCycleRow).where(PolicyCycleRow.id == cycle_id).values(state=PLANNED)
        )
    return True


def plan_cycle(services: WorkerServices, cycle_id: int) -> int:
    """Plan the cycle's policies on what its parts stored; the number of actions proposed."""
    with session_scope() as session:
        cycle = session.get(PolicyCycleRow, cycle_id)
        names = list(cycle.details.get("policies", [])) if cycle else []
    pack = restrict(services.pack(), names)
    planner = ActionPlanner(
        settings=services.settings, safety=services.safety, audit=services.audit
    )
    with session_scope() as session:
        planner.expire_approvals(session)
        result = planner.plan(session, pack, requested_by="scheduler")
    if result.outside_window:  # the scan outlasted the run window: said, not hidden
        log.warning("cycle planned too late for its run window", skipped=result.outside_window)
    with session_scope() as session:
        cycle = session.get(PolicyCycleRow, cycle_id)
        if cycle is not None:
            done: dict[str, object] = {"planned": len(result.created)}
            if result.outside_window:
                done["outside_window"] = result.outside_window
            cycle.details = {**cycle.details, **done}
    return len(result.created)


def stale_cycles(session: Session, older_than: dt.datetime) -> list[PolicyCycleRow]:
    """Cycles still scanning with no part finished since `older_than`: their parts were lost
    (a flushed or restarted broker) or their workers died."""
    query = select(PolicyCycleRow).where(
        PolicyCycleRow.state == SCANNING, PolicyCycleRow.updated_at < older_than
    )
    return list(session.scalars(query))
