"""The stored evaluator's fallback: one policy evaluated in Python on its kind's live rows."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.models import MetricSummaryRow, OpportunityRow, ResourceRow
from backend.core.repositories import to_resource
from backend.core.upsert import upsert_rows
from backend.domain.policy.evaluate import EvaluationContext, evaluate
from backend.domain.policy.model import Policy, PolicyPack
from backend.domain.resources import MetricSpec, ResourceKind

UPDATED_ON_CONFLICT = (
    "action",
    "params",
    "evidence",
    "estimated_monthly_savings",
    "savings_unknown",
    "status",
    "last_seen",
    "resolved_at",
)


def evaluate_in_python(session: Session, policy: Policy, now: dt.datetime) -> int:
    """Evaluate `policy` on the live inventory (with the volumes and AMIs its relations
    read) and upsert its opportunities; savings are priced afterwards by the caller."""
    rows = list(
        session.scalars(
            select(ResourceRow).where(
                ResourceRow.kind.in_(
                    [policy.kind.value, ResourceKind.EBS_VOLUME.value, ResourceKind.AMI.value]
                ),
                ResourceRow.gone_at.is_(None),
            )
        )
    )
    resources = [to_resource(row) for row in rows]
    pk_of = {(row.account_id, row.region, row.kind, row.resource_id): row.id for row in rows}
    metrics: dict[tuple[str, MetricSpec], float | None] = {}
    if policy.metric_specs:
        resource_id = {row.id: row.resource_id for row in rows if row.kind == policy.kind.value}
        for m in session.scalars(
            select(MetricSummaryRow).where(MetricSummaryRow.resource_pk.in_(list(resource_id)))
        ):
            spec = MetricSpec(m.namespace, m.metric, m.statistic, m.days)
            metrics[(resource_id[m.resource_pk], spec)] = m.value
    ctx = EvaluationContext.from_resources(resources, now=now, metrics=metrics)
    found = [
        {
            "policy_name": policy.name,
            "resource_pk": pk_of[m.resource.key],
            "action": policy.action.name,
            "params": dict(policy.action.params),
            "evidence": m.evidence,
            "estimated_monthly_savings": None,
            "savings_unknown": None,
            "status": "open",
            "first_found": now,
            "last_seen": now,
            "resolved_at": None,
        }
        for m in evaluate(
            PolicyPack((policy,)), [r for r in resources if r.kind is policy.kind], ctx
        )
    ]
    upsert_rows(
        session,
        OpportunityRow,
        found,
        conflict_columns=("policy_name", "resource_pk"),
        update_columns=UPDATED_ON_CONFLICT,
    )
    return len(found)
