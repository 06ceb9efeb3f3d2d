"""A scan's audit record: its events, each in a savepoint, and the opportunity summary.

A scan changes nothing in AWS, so an event that cannot be written does not undo it: the
failure is logged and collected in `errors` (the scan keeps it in its run's failures).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.core.audit_chain import EventType
from backend.core.automation_audit_logger import AuditLogError, AuditLogger
from backend.core.models import OpportunityRow

log = structlog.get_logger(__name__)
ACTOR = "scanner"
AUDITED_ERRORS = 50  # per event: a scan of many dead regions would bloat the audit log


@dataclass
class ScanAudit:
    """The scan's audit events, each in a savepoint: one that fails leaves the scan's data."""

    audit: AuditLogger
    scan_id: int
    scope: dict[str, Any]
    started: float
    errors: list[str] = field(default_factory=list)

    def write(self, session: Session, kind: EventType, outcome: str, details: Any) -> None:
        try:
            with session.begin_nested():
                self.audit.record(
                    kind,
                    subject_type="scan",
                    subject_id=self.scan_id,
                    actor=ACTOR,
                    outcome=outcome,
                    details=details,
                    session=session,
                )
        except AuditLogError as exc:
            self.errors.append(str(exc))
            log.error("scan audit event not written", scan=self.scan_id, error=str(exc))

    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 3)


def opportunity_summary(
    session: Session,
    policies: Sequence[str],
    at: dt.datetime,
    found: Sequence[dict[str, Any]] | None = None,
    was_open: set[tuple[str, int]] | frozenset[tuple[str, int]] = frozenset(),
) -> dict[str, Any]:
    """Per policy: found at `at` (new, or open before and still open), resolved, savings.

    Without `found` (StoredPolicyEvaluator run with `now=at` writes its own), they are read
    back: seen at `at`, new if first found then (found again after resolving: still open).
    """
    if found is None:
        o = OpportunityRow
        rows = session.execute(
            select(o.policy_name, o.resource_pk, o.estimated_monthly_savings, o.first_found).where(
                o.status == "open", o.last_seen == at, o.policy_name.in_(policies)
            )
        ).all()
        found = [r._asdict() for r in rows]
        was_open = {(r.policy_name, r.resource_pk) for r in rows if r.first_found != at}
    per: dict[str, dict[str, Any]] = {
        name: {"found": 0, "new": 0, "still_open": 0, "resolved": 0, "monthly_savings": 0.0}
        for name in policies
    }
    unknown: dict[str, int] = dict.fromkeys(policies, 0)
    for row in found:
        p = per[row["policy_name"]]
        p["found"] += 1
        known = (row["policy_name"], row["resource_pk"]) in was_open
        p["still_open" if known else "new"] += 1
        if row["estimated_monthly_savings"] is None:
            unknown[row["policy_name"]] += 1
        else:
            p["monthly_savings"] += row["estimated_monthly_savings"]
    resolved = session.execute(
        select(OpportunityRow.policy_name, func.count())
        .where(
            OpportunityRow.status == "resolved",
            OpportunityRow.resolved_at == at,
            OpportunityRow.policy_name.in_(policies),
        )
        .group_by(OpportunityRow.policy_name)
    )
    for name, count in resolved:
        per[name]["resolved"] = int(count)
    for name, p in per.items():
        p["monthly_savings"] = round(p["monthly_savings"], 2)
        if unknown[name]:
            p["savings_unknown"] = unknown[name]
    totals = {
        k: sum(p[k] for p in per.values()) for k in ("found", "new", "still_open", "resolved")
    }
    savings = round(sum(p["monthly_savings"] for p in per.values()), 2)
    return {**totals, "monthly_savings": savings, "policies": per}
