"""Evaluate a pack over the stored inventory and keep the opportunities, with history.

Policies whose filters compile to SQL are evaluated in the database, one statement per
resource kind: a single scan of that kind computes every policy's verdict as a column (each
metric a LEFT JOIN, shared by all the kind's policies), and one INSERT ... SELECT ... ON
CONFLICT writes the opportunities. Any other policy is evaluated in Python on the live rows
of its kind. Savings are the resource's monthly cost where that is the estimate; otherwise
each distinct pricing signature of the matched rows is priced once by the price model.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import typing
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Float,
    MetaData,
    String,
    Table,
    and_,
    false,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from backend.core.models import MetricSummaryRow, OpportunityRow, ResourceRow
from backend.core.policy_evaluator_python import UPDATED_ON_CONFLICT, evaluate_in_python
from backend.core.sql_policies import SqlCompiler, leaves
from backend.domain.policy.measures import MetricsFilter
from backend.domain.policy.model import Policy, PolicyPack
from backend.domain.policy.values import ValueFilter
from backend.domain.pricing import PRICING_FIELDS, PriceTable, estimate_savings, pricing_stub
from backend.domain.resources import MetricSpec, ResourceKind

# (action, kind) whose estimated saving is exactly the resource's monthly cost.
SAVES_MONTHLY_COST = {
    ("stop", ResourceKind.EC2_INSTANCE),
    ("terminate", ResourceKind.EC2_INSTANCE),
    ("release", ResourceKind.ELASTIC_IP),
    ("delete", ResourceKind.EBS_SNAPSHOT),
    ("delete", ResourceKind.LOAD_BALANCER),
}
_INSERTED = [
    "policy_name",
    "resource_pk",
    "action",
    "params",
    "evidence",
    "estimated_monthly_savings",
    "status",
    "first_found",
    "last_seen",
]


@dataclass
class PolicyOutcome:
    policy: str
    engine: str  # sql | python
    matched: int


@dataclass
class StoredEvaluation:
    outcomes: list[PolicyOutcome] = field(default_factory=list)
    resolved: int = 0
    seconds: float = 0.0
    seconds_by_step: dict[str, float] = field(default_factory=dict)


class StoredPolicyEvaluator:
    """Runs in the caller's session; the caller commits."""

    def __init__(
        self, session: Session, *, prices: PriceTable | None = None, now: dt.datetime | None = None
    ) -> None:
        self._session = session
        self._prices = prices or PriceTable.shipped()
        self._now = now or dt.datetime.now(dt.UTC)
        self._dialect = session.get_bind().dialect.name
        self.timings: dict[str, float] = {}

    def run(self, pack: PolicyPack) -> StoredEvaluation:
        started = time.perf_counter()
        out = StoredEvaluation()
        if self._dialect == "postgresql":
            # JSON predicates inflate the planner's costs until it JIT-compiles every
            # statement (0.7 s each); and hashed subplans need room.
            self._session.execute(text("SET LOCAL jit = off"))
            self._session.execute(text("SET LOCAL work_mem = '64MB'"))
        by_kind: dict[ResourceKind, list[Policy]] = defaultdict(list)
        for policy in pack.enabled():
            by_kind[policy.kind].append(policy)
        engines: dict[str, str] = {}
        for kind, policies in by_kind.items():
            t0 = time.perf_counter()
            in_sql = self._scan_kind(kind, policies)
            for policy in policies:
                if policy.name in in_sql:
                    engines[policy.name] = "sql"
                else:
                    evaluate_in_python(self._session, policy, self._now)
                    engines[policy.name] = "python"
            out.seconds_by_step[f"select {kind.value}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for policy in pack.enabled():
            in_python = engines[policy.name] == "python"
            if in_python and (policy.action.name, policy.kind) not in SAVES_MONTHLY_COST:
                self._price_by_signature(policy)
        out.seconds_by_step["savings"] = time.perf_counter() - t0
        counts = self._counts([p.name for p in pack.enabled()])
        out.outcomes = [
            PolicyOutcome(p.name, engines[p.name], counts.get(p.name, 0)) for p in pack.enabled()
        ]
        t0 = time.perf_counter()
        out.resolved = self._resolve([p.name for p in pack.enabled()])
        out.seconds_by_step["resolve"] = time.perf_counter() - t0
        out.seconds = time.perf_counter() - started
        return out

    # -- one scan per kind -----------------------------------------------------------------
    def _scan_kind(self, kind: ResourceKind, policies: list[Policy]) -> set[str]:
        """Evaluate the kind's compilable policies: one scan into a temporary table of hits,
        one pricing per distinct signature, one INSERT of every policy's opportunities."""
        r = ResourceRow
        specs = sorted(
            {s for p in policies for s in p.metric_specs},
            key=lambda s: (s.namespace, s.metric, s.statistic, s.days),
        )
        joined = {spec: aliased(MetricSummaryRow, name=f"m{i}") for i, spec in enumerate(specs)}
        compiler = SqlCompiler(
            self._dialect,
            self._now,
            {s: (typing.cast(Any, m.id), typing.cast(Any, m.value)) for s, m in joined.items()},
        )
        verdicts = [(p, compiler.compile(p.filters)) for p in policies]
        compiled = [(p, v) for p, v in verdicts if v is not None]
        if not compiled:
            return set()
        tag_keys = sorted(
            {
                leaf.key[4:]
                for p, _ in compiled
                for leaf in leaves(p.filters)
                if isinstance(leaf, ValueFilter) and leaf.key.startswith("tag:")
            }
        )
        flags = [func.coalesce(v, false()) for _, v in compiled]
        source: Any = ResourceRow.__table__
        for spec, m in joined.items():
            source = source.outerjoin(
                m,
                and_(
                    m.resource_pk == r.id,
                    m.namespace == spec.namespace,
                    m.metric == spec.metric,
                    m.statistic == spec.statistic,
                    m.days == spec.days,
                ),
            )
        scan = (
            select(
                r.id.label("rid"),
                r.monthly_cost.label("cost"),
                r.region.label("region"),
                r.state.label("state"),
                self._signature(kind).label("sig"),
                *[flag.label(f"p{i}") for i, flag in enumerate(flags)],
                *[r.tags[key].as_string().label(f"t{i}") for i, key in enumerate(tag_keys)],
                *[m.value.label(f"v{i}") for i, m in enumerate(joined.values())],
            )
            .select_from(source)
            .where(r.kind == kind.value, r.gone_at.is_(None), or_(*flags))
        )
        connection = self._session.connection()
        connection.exec_driver_sql("DROP TABLE IF EXISTS finops_hits")
        into = scan.into("finops_hits", temporary=True)
        t0 = time.perf_counter()
        connection.execute(into)
        self.timings[f"scan {kind.value}"] = time.perf_counter() - t0
        hits = into.table
        priced = self._price_hits(connection, hits, [p for p, _ in compiled], kind)
        branches = []
        for i, (policy, _) in enumerate(compiled):
            if (policy.action.name, kind) in SAVES_MONTHLY_COST:
                saving: Any = hits.c.cost
                origin: Any = hits
            else:
                saving = priced.c.usd
                origin = hits.outerjoin(
                    priced,
                    and_(
                        priced.c.policy == policy.name,
                        priced.c.region == hits.c.region,
                        priced.c.state == hits.c.state,
                        priced.c.sig == hits.c.sig,
                    ),
                )
            branches.append(
                select(
                    literal(policy.name),
                    hits.c.rid,
                    literal(policy.action.name),
                    literal(dict(policy.action.params), OpportunityRow.params.type),
                    self._evidence(policy, hits, tag_keys, specs),
                    saving,
                    literal("open"),
                    literal(self._now, OpportunityRow.first_found.type),
                    literal(self._now, OpportunityRow.last_seen.type),
                )
                .select_from(origin)
                .where(hits.c[f"p{i}"].is_(True))
            )
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        stmt = insert(OpportunityRow).from_select(_INSERTED, union_all(*branches))
        stmt = stmt.on_conflict_do_update(
            index_elements=["policy_name", "resource_pk"],
            set_={
                name: stmt.excluded[name]
                for name in UPDATED_ON_CONFLICT
                if name not in ("savings_unknown", "resolved_at")
            }
            | {"resolved_at": None, "savings_unknown": None},
        )
        t0 = time.perf_counter()
        connection.execute(stmt)
        self.timings[f"write {kind.value}"] = time.perf_counter() - t0
        connection.exec_driver_sql("DROP TABLE finops_hits")
        connection.exec_driver_sql("DROP TABLE IF EXISTS finops_priced")
        return {p.name for p, _ in compiled}

    def _price_hits(
        self, connection: Any, hits: Any, policies: list[Policy], kind: ResourceKind
    ) -> Table:
        """Price each distinct (region, state, signature) of the hits once per policy."""
        priced = Table(
            "finops_priced",
            MetaData(),
            Column("policy", String),
            Column("region", String),
            Column("state", String),
            Column("sig", String),
            Column("usd", Float),
            Column("why", String),
            prefixes=["TEMPORARY"],
        )
        needing = [p for p in policies if (p.action.name, kind) not in SAVES_MONTHLY_COST]
        connection.exec_driver_sql("DROP TABLE IF EXISTS finops_priced")
        priced.create(connection)
        if not needing:
            return priced
        signatures = connection.execute(
            select(hits.c.region, hits.c.state, hits.c.sig).distinct()
        ).all()
        rows = []
        for policy in needing:
            params = dict(policy.action.params)
            for region, state, sig in signatures:
                stub = pricing_stub(kind, region, state, json.loads(sig) if sig else [])
                s = estimate_savings(policy.action.name, stub, self._prices, params)
                rows.append(
                    {
                        "policy": policy.name,
                        "region": region,
                        "state": state,
                        "sig": sig,
                        "usd": s.monthly_usd,
                        "why": s.unknown,
                    }
                )
        if rows:
            connection.execute(priced.insert(), rows)
        return priced

    def _evidence(
        self, policy: Policy, hits: Any, tag_keys: list[str], specs: list[MetricSpec]
    ) -> ColumnElement[Any]:
        """The tag values and metric summaries the policy looked at, as a JSON object."""
        pairs: list[Any] = []
        for leaf in leaves(policy.filters):
            if isinstance(leaf, ValueFilter) and leaf.key.startswith("tag:"):
                pairs += [leaf.key, hits.c[f"t{tag_keys.index(leaf.key[4:])}"]]
            elif isinstance(leaf, MetricsFilter):
                s = leaf.spec
                pairs += [
                    f"metric.{s.metric}.{s.statistic}.{s.days}d",
                    hits.c[f"v{specs.index(s)}"],
                ]
        if not pairs:
            return literal({}, OpportunityRow.evidence.type)
        build = func.jsonb_build_object if self._dialect == "postgresql" else func.json_object
        return typing.cast(ColumnElement[Any], build(*pairs))

    # -- savings by pricing signature -----------------------------------------------------
    def _price_by_signature(self, policy: Policy) -> None:
        r, o = ResourceRow, OpportunityRow
        signature = self._signature(policy.kind)
        mine = and_(o.policy_name == policy.name, o.last_seen == self._now)
        distinct = self._session.execute(
            select(r.region, r.state, signature)
            .distinct()
            .join(o, o.resource_pk == r.id)
            .where(mine)
        ).all()
        if not distinct:
            return
        params = dict(policy.action.params)
        priced = []
        for region, state, sig in distinct:
            stub = pricing_stub(policy.kind, region, state, json.loads(sig) if sig else [])
            s = estimate_savings(policy.action.name, stub, self._prices, params)
            priced.append(
                {
                    "region": region,
                    "state": state,
                    "sig": sig,
                    "usd": s.monthly_usd,
                    "why": s.unknown,
                }
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
        connection = self._session.connection()
        table.drop(connection, checkfirst=True)
        table.create(connection)
        connection.execute(table.insert(), priced)
        self._session.execute(
            update(o)
            .where(
                mine,
                o.resource_pk == r.id,
                r.region == table.c.region,
                r.state == table.c.state,
                signature == table.c.sig,
            )
            .values(estimated_monthly_savings=table.c.usd, savings_unknown=table.c.why)
            .execution_options(synchronize_session=False)
        )
        table.drop(connection)

    def _signature(self, kind: ResourceKind) -> ColumnElement[Any]:
        """The pricing fields of a resource as one JSON array text (the same text both ways)."""
        fields = PRICING_FIELDS[kind]
        if self._dialect == "postgresql":
            parts = [ResourceRow.attributes[tuple(f.split("."))] for f in fields]
            return typing.cast(ColumnElement[Any], func.jsonb_build_array(*parts).cast(String))
        paths = [func.json_extract(ResourceRow.attributes, "$." + f) for f in fields]
        return typing.cast(ColumnElement[Any], func.json_array(*paths))

    # -- bookkeeping ----------------------------------------------------------------------
    def _counts(self, policies: list[str]) -> dict[str, int]:
        rows = self._session.execute(
            select(OpportunityRow.policy_name, func.count())
            .where(OpportunityRow.policy_name.in_(policies), OpportunityRow.last_seen == self._now)
            .group_by(OpportunityRow.policy_name)
        )
        return {name: int(n) for name, n in rows}

    def _resolve(self, policies: list[str]) -> int:
        result = self._session.execute(
            update(OpportunityRow)
            .where(
                OpportunityRow.policy_name.in_(policies),
                OpportunityRow.status == "open",
                OpportunityRow.last_seen < self._now,
            )
            .values(status="resolved", resolved_at=self._now)
        )
        return int(getattr(result, "rowcount", 0) or 0)
