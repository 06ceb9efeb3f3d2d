"""What the stored-evaluation tests share: an inventory stored as a scan would leave it, and
the evaluator's selection read back."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import delete, select

from backend.core.database import session_scope
from backend.core.models import (
    InventoryPartRow,
    MetricSummaryRow,
    OpportunityRow,
    ResourceRow,
    ScanRunRow,
)
from backend.core.policy_evaluator import StoredPolicyEvaluator
from backend.core.repositories import RELATION_KINDS
from backend.core.upsert import upsert_rows
from backend.domain.resources import Resource, ResourceKind

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def store(resources: list[Resource], metrics: dict[Any, float | None]) -> None:
    with session_scope() as session:
        session.execute(delete(OpportunityRow))
        session.execute(delete(MetricSummaryRow))
        session.execute(delete(ResourceRow))
        upsert_rows(
            session,
            ResourceRow,
            [
                {
                    "account_id": r.account_id,
                    "region": r.region,
                    "kind": r.kind.value,
                    "resource_id": r.resource_id,
                    "state": r.state,
                    "tags": dict(r.tags),
                    "attributes": dict(r.attributes),
                    "created_at": r.created_at,
                    "state_changed_at": r.state_changed_at,
                    "monthly_cost": 10.0,
                    "first_seen": NOW,
                    "last_seen": NOW,
                }
                for r in resources
            ],
            conflict_columns=("account_id", "region", "kind", "resource_id"),
            update_columns=("state",),
        )
        pks = {row.resource_id: row.id for row in session.scalars(select(ResourceRow))}
        session.add_all(
            MetricSummaryRow(
                resource_pk=pks[rid],
                namespace=spec.namespace,
                metric=spec.metric,
                statistic=spec.statistic,
                days=spec.days,
                value=value,
                collected_at=NOW,
            )
            for (rid, spec), value in metrics.items()
        )
        # As a scan that listed every region's volumes and AMIs whole (Python's default).
        mark_listed({(r.account_id, r.region) for r in resources}, session)


def mark_listed(pairs: set[tuple[str, str]], session: Any) -> None:
    """Only these (account, region) have their volumes and AMIs listed completely."""
    session.execute(delete(InventoryPartRow))
    scan = ScanRunRow(status="complete")
    session.add(scan)
    session.flush()
    session.add_all(
        InventoryPartRow(account_id=a, region=r, kind=k, scan_id=scan.id, completed_at=NOW)
        for a, r in sorted(pairs)
        for k in sorted(RELATION_KINDS)
    )


def one(
    kind: ResourceKind, rid: str, state: str, tags: dict[str, str] | None = None, **attrs: Any
) -> Resource:
    """One resource in 111111111111/us-east-1."""
    account, region = "111111111111", "us-east-1"
    return Resource(kind, rid, account, region, state, tags=tags or {}, attributes=attrs)


def stored_selection(pack: Any) -> dict[str, set[str]]:
    with session_scope() as session:
        StoredPolicyEvaluator(session, now=NOW).run(pack)
    with session_scope() as session:
        rows = session.execute(
            select(OpportunityRow.policy_name, ResourceRow.resource_id)
            .join(ResourceRow, ResourceRow.id == OpportunityRow.resource_pk)
            .where(OpportunityRow.status == "open")
        )
        out: dict[str, set[str]] = {}
        for policy, rid in rows:
            out.setdefault(policy, set()).add(rid)
        return out


def ec2_instance(tags: dict[str, str]) -> Resource:
    return one(ResourceKind.EC2_INSTANCE, "i-1", "running", tags, InstanceType="m5.large")
