"""The stored evaluator's fallback: one policy evaluated in Python on its kind's live rows,
then priced by the distinct pricing signatures of what it found."""

from __future__ import annotations

import datetime as dt
import json
import typing
from collections import defaultdict
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Float,
    MetaData,
    String,
    Table,
    and_,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session

from backend.core.models import MetricSummaryRow, OpportunityRow, ResourceRow
from backend.core.opportunity_keys import opportunity_id
from backend.core.repositories import relations_inventoried, to_resource
from backend.core.upsert import upsert_rows
from backend.domain.policy.evaluate import EvaluationContext, evaluate
from backend.domain.policy.model import Policy, PolicyPack
from backend.domain.pricing import PRICING_FIELDS, PriceTable, estimate_savings, pricing_stub
from backend.domain.resources import MetricSpec, Resource, ResourceKind

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


def evaluate_in_python(
    session: Session,
    policy: Policy,
    now: dt.datetime,
    *,
    number: int,
    saves_cost: bool = False,
) -> int:
    """Evaluate `policy` on the live inventory (with the volumes and AMIs its relations
    read) and upsert its opportunities (`number`: the policy's, in their ids). With
    `saves_cost` the saving is the resource's monthly cost (or why it is unknown), else the
    caller prices them afterwards.

    Each (account, region) is evaluated on its own metrics and relations, as a scan does:
    ids repeat across regions and accounts (an RDS identifier is a name), so one map keyed
    by id alone would judge a database on another's connections."""
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
    row_of = {(row.account_id, row.region, row.kind, row.resource_id): row for row in rows}
    groups: dict[tuple[str, str], list[Resource]] = defaultdict(list)
    for row in rows:
        groups[(row.account_id, row.region)].append(to_resource(row))
    metrics: dict[tuple[str, str], dict[tuple[str, MetricSpec], float | None]] = defaultdict(dict)
    if policy.metric_specs:
        mine = {row.id: row for row in rows if row.kind == policy.kind.value}
        for m in session.scalars(
            select(MetricSummaryRow).where(MetricSummaryRow.resource_pk.in_(list(mine)))
        ):
            row = mine[m.resource_pk]
            spec = MetricSpec(m.namespace, m.metric, m.statistic, m.days)
            metrics[(row.account_id, row.region)][(row.resource_id, spec)] = m.value
    complete = relations_inventoried(session)
    found: list[dict[str, Any]] = []
    for pair, resources in sorted(groups.items()):
        ctx = EvaluationContext.from_resources(
            resources,
            now=now,
            metrics=metrics.get(pair, {}),
            inventoried=[pair] if pair in complete else [],
        )
        selected = [r for r in resources if r.kind is policy.kind]
        for match in evaluate(PolicyPack((policy,)), selected, ctx):
            row = row_of[match.resource.key]
            found.append(
                {
                    "id": opportunity_id(row.id, number),
                    "policy_name": policy.name,
                    "resource_pk": row.id,
                    "action": policy.action.name,
                    "params": dict(policy.action.params),
                    "evidence": match.evidence,
                    "estimated_monthly_savings": row.monthly_cost if saves_cost else None,
                    "savings_unknown": row.cost_unknown if saves_cost else None,
                    "status": "open",
                    "first_found": now,
                    "last_seen": now,
                    "resolved_at": None,
                }
            )
    upsert_rows(
        session,
        OpportunityRow,
        found,
        conflict_columns=("id",),
        update_columns=UPDATED_ON_CONFLICT,
    )
    return len(found)


def price_by_signature(
    session: Session, policy: Policy, now: dt.datetime, prices: PriceTable
) -> None:
    """Price the opportunities `policy` found at `now`: each distinct signature once."""
    r, o = ResourceRow, OpportunityRow
    dialect = session.get_bind().dialect.name
    sig_of = signature(dialect, policy.kind)
    mine = and_(o.policy_name == policy.name, o.last_seen == now)
    distinct = session.execute(
        select(r.region, r.state, sig_of).distinct().join(o, o.resource_pk == r.id).where(mine)
    ).all()
    if not distinct:
        return
    params = dict(policy.action.params)
    priced = []
    for region, state, sig in distinct:
        stub = pricing_stub(policy.kind, region, state, json.loads(sig) if sig else [])
        s = estimate_savings(policy.action.name, stub, prices, params)
        priced.append(
            {"region": region, "state": state, "sig": sig, "usd": s.monthly_usd, "why": s.unknown}
        )
    table = Table(
        "finops_priced",
        MetaData(),
        Column("region", String),
        Column("state", String),
        Column("sig", String),
        Column("usd", Float),
        Column("why", String),
        prefixes=["TEMPORARY"],
    )
    connection = session.connection()
    table.drop(connection, checkfirst=True)
    table.create(connection)
    connection.execute(table.insert(), priced)
    session.execute(
        update(o)
        .where(
            mine,
            o.resource_pk == r.id,
            r.region == table.c.region,
            r.state == table.c.state,
            sig_of == table.c.sig,
        )
        .values(estimated_monthly_savings=table.c.usd, savings_unknown=table.c.why)
        .execution_options(synchronize_session=False)
    )
    table.drop(connection)


def signature(
    dialect: str, kind: ResourceKind, attributes: Any = ResourceRow.attributes
) -> ColumnElement[Any]:
    """The pricing fields of a resource as one JSON array text (the same text both ways)."""
    fields = PRICING_FIELDS[kind]
    if dialect == "postgresql":
        parts = [attributes[tuple(f.split("."))] for f in fields]
        return typing.cast(ColumnElement[Any], func.jsonb_build_array(*parts).cast(String))
    paths = [func.json_extract(attributes, "$." + f) for f in fields]
    return typing.cast(ColumnElement[Any], func.json_array(*paths))
