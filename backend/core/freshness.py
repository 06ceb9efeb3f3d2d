"""How old the evidence behind an action is: its inventory row and the policy's metrics.

Safety invariant 1 (stale inventory fails closed): an account whose scans keep failing
keeps its old rows, and its opportunities stay open as "undecided"; planning and execution
must not act on them. The verdict itself is the pure rule `fresh_data` (domain/safety.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.core.models import ActionRow, MetricSummaryRow, OpportunityRow, ResourceRow
from backend.domain.policy.model import Policy
from backend.domain.resources import MetricSpec

Observed = list[tuple[str, dt.datetime]]
MetricStamps = dict[int, dict[MetricSpec, dt.datetime]]  # resource pk -> spec -> collected


def max_age(settings: Settings) -> dt.timedelta:
    return dt.timedelta(hours=settings.max_inventory_age_hours)


def max_age_at_execution(settings: Settings, policy: Policy | None) -> dt.timedelta:
    """The bound, plus the owner's grace period where the policy gives notice.

    The plan checked the evidence against the bound; a notified action may not run before
    its grace period ends, and the metrics cannot be read again at execution (the filters
    on state and tags are re-checked on a fresh describe). Without the grace, every
    notified action would need a scan in the day before it runs, and none between the plan
    and its due date says otherwise; with it, evidence a month old still blocks.
    """
    grace = (
        dt.timedelta(days=policy.notice.grace_days)
        if policy is not None and policy.notice.notify
        else dt.timedelta(0)
    )
    return max_age(settings) + grace


def metric_label(resource_id: str, spec: MetricSpec) -> str:
    return f"metric {spec.metric} {spec.statistic} {spec.days}d of {resource_id}"


def planning_metric_stamps(session: Session, policies: Iterable[str]) -> MetricStamps:
    """When each stored metric of every resource with an open opportunity was collected: one
    query for the whole plan, not one per opportunity."""
    rows = session.execute(
        select(
            MetricSummaryRow.resource_pk,
            MetricSummaryRow.namespace,
            MetricSummaryRow.metric,
            MetricSummaryRow.statistic,
            MetricSummaryRow.days,
            MetricSummaryRow.collected_at,
        )
        .join(OpportunityRow, OpportunityRow.resource_pk == MetricSummaryRow.resource_pk)
        .where(OpportunityRow.status == "open", OpportunityRow.policy_name.in_(list(policies)))
    )
    out: MetricStamps = {}
    for pk, namespace, metric, statistic, days, at in rows:
        out.setdefault(pk, {})[MetricSpec(namespace, metric, statistic, days)] = at
    return out


def planning_evidence(
    policy: Policy, opp: OpportunityRow, resource: ResourceRow, stamps: MetricStamps
) -> Observed:
    """What the plan rests on: the resource as last seen, the policy's last selection of it
    (an evaluation left undecided keeps the old one), and the metrics the policy reads."""
    observed: Observed = [
        (f"inventory of {resource.resource_id}", resource.last_seen),
        (f"policy {policy.name}'s selection of {resource.resource_id}", opp.last_seen),
    ]
    stored = stamps.get(resource.id, {})
    observed += [
        (metric_label(resource.resource_id, spec), stored[spec])
        for spec in sorted(policy.metric_specs, key=repr)
        if spec in stored
    ]
    return observed


def execution_evidence(session: Session, row: ActionRow, policy: Policy) -> Observed:
    """The inventory row and the policy's stored metrics of the action's resource.

    A resource missing from the inventory raises: the caller blocks (fail closed)."""
    resource = session.scalars(
        select(ResourceRow).where(
            ResourceRow.account_id == row.account_id,
            ResourceRow.region == row.region,
            ResourceRow.kind == row.kind,
            ResourceRow.resource_id == row.resource_id,
        )
    ).first()
    if resource is None:
        raise LookupError(f"{row.resource_id} is not in the inventory")
    observed: Observed = [(f"inventory of {row.resource_id}", resource.last_seen)]
    wanted = policy.metric_specs
    for m in session.scalars(
        select(MetricSummaryRow).where(MetricSummaryRow.resource_pk == resource.id)
    ):
        spec = MetricSpec(m.namespace, m.metric, m.statistic, m.days)
        if spec in wanted:
            observed.append((metric_label(row.resource_id, spec), m.collected_at))
    return observed
