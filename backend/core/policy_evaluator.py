"""Evaluate a pack over the stored inventory and keep the opportunities, with history.

Policies whose filters compile to SQL are evaluated in the database, one scan per resource
kind into a temporary table (no WAL, no index): each distinct leaf filter of the kind's
policies is computed once per row (each metric a LEFT JOIN, shared), every policy's verdict
is a column over those, and each resource some policy selects becomes one narrow row (its
verdicts, and what the evidence and the savings read). Savings are the resource's monthly
cost where that is the estimate; otherwise each distinct pricing signature found is priced
once by the price model. One statement then expands the rows into one opportunity per
(policy, resource) and writes them to `opportunities`: on PostgreSQL an INSERT on a first
evaluation and a MERGE after, on SQLite an upsert. Any other policy is evaluated in Python on
the live rows of its kind.
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
    BigInteger,
    ColumnElement,
    Float,
    String,
    and_,
    bindparam,
    case,
    false,
    func,
    literal,
    null,
    or_,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, aliased

from backend.core.evaluation_parts import INSERT, MERGE, PRICES, Hits, LeafColumns
from backend.core.models import MetricSummaryRow, OpportunityRow, ResourceRow
from backend.core.opportunity_keys import id_expression, policy_numbers
from backend.core.policy_evaluator_python import (
    UPDATED_ON_CONFLICT,
    evaluate_in_python,
    price_by_signature,
    signature,
)
from backend.core.repositories import lock_opportunities
from backend.core.sql_policies import (
    TAG_COLUMNS,
    Predicate,
    SqlCompiler,
    ami_snapshot_keys,
    leaves,
    tags_read,
)
from backend.core.sql_relations import RelationJoins
from backend.core.types import utcnow
from backend.domain.policy.measures import MetricsFilter
from backend.domain.policy.model import Policy, PolicyPack
from backend.domain.policy.relations import BacksAmi, Orphaned
from backend.domain.policy.values import ValueFilter
from backend.domain.pricing import PriceTable, estimate_savings, pricing_stub
from backend.domain.resources import MetricSpec, ResourceKind

# (action, kind) whose estimated saving is exactly the resource's monthly cost.
SAVES_MONTHLY_COST = {
    ("stop", ResourceKind.EC2_INSTANCE),
    ("terminate", ResourceKind.EC2_INSTANCE),
    ("release", ResourceKind.ELASTIC_IP),
    ("delete", ResourceKind.EBS_SNAPSHOT),
    ("delete", ResourceKind.LOAD_BALANCER),
}


# PostgreSQL's planner, for the evaluation's statements: JSON predicates inflate its costs
# until it JIT-compiles every statement (0.7 s each); hashed subplans need room; and every
# bulk scan is worth its parallel workers (the EBS and snapshot selects were planned
# serial on their estimates).
_PLANNER = {
    "jit": "off",
    "work_mem": "64MB",
    "parallel_setup_cost": "0",
    "parallel_tuple_cost": "0",
}


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
        self._now = now or utcnow()
        self._dialect = session.get_bind().dialect.name
        self._hits_by_kind: list[Hits] = []
        self._numbers: dict[str, int] = {}
        self.timings: dict[str, float] = {}

    def run(self, pack: PolicyPack) -> StoredEvaluation:
        if self._dialect != "postgresql":
            return self._run(pack)
        # The planner settings for the evaluation's statements only: the caller's next
        # statements in this transaction (an action plan, say) get their own back. Not
        # restored after a failure: the transaction is then rolled back, and they with it.
        names = list(_PLANNER)
        before = self._session.execute(
            select(*[func.current_setting(name) for name in names])
        ).one()
        self._set(_PLANNER)
        evaluation = self._run(pack)
        self._set(dict(zip(names, before, strict=True)))
        return evaluation

    def _set(self, settings: dict[str, str]) -> None:
        """SET LOCAL each, in one statement."""
        self._session.execute(
            select(*[func.set_config(name, value, true()) for name, value in settings.items()])
        )

    def _run(self, pack: PolicyPack) -> StoredEvaluation:
        started = time.perf_counter()
        out = StoredEvaluation()
        connection = self._session.connection()
        lock_opportunities(self._session)  # one writer until commit
        # Asked before anything is written (and no other writer until commit): without an
        # open opportunity of these policies, none can resolve, and the resolving pass (a
        # scan of everything just written) is skipped, as on a first evaluation.
        names = [p.name for p in pack.enabled()]
        resolvable = self._any(names, OpportunityRow.status == "open")
        known = resolvable or self._any(names)
        self._numbers = policy_numbers(connection, names)
        by_kind: dict[ResourceKind, list[Policy]] = defaultdict(list)
        for policy in pack.enabled():
            by_kind[policy.kind].append(policy)
        engines: dict[str, str] = {}
        counts: dict[str, int] = {}
        self._hits_by_kind = []
        for kind, policies in by_kind.items():
            t0 = time.perf_counter()
            in_sql = self._scan_kind(kind, policies)
            for policy in policies:
                if policy.name in in_sql:
                    engines[policy.name] = "sql"
                else:
                    counts[policy.name] = evaluate_in_python(
                        self._session,
                        policy,
                        self._now,
                        number=self._numbers[policy.name],
                        saves_cost=self._saves_cost(policy),
                    )
                    engines[policy.name] = "python"
            out.seconds_by_step[f"select {kind.value}"] = time.perf_counter() - t0
        if self._hits_by_kind:
            t0 = time.perf_counter()
            self._price_hits()
            out.seconds_by_step["price"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            found = union_all(
                *[rows for h in self._hits_by_kind for rows in self._found_rows(h)]
            ).subquery("f")
            self._write_found(found, known=known)
            out.seconds_by_step["write"] = time.perf_counter() - t0
            for h in self._hits_by_kind:
                counts |= self._count(h)
            for table in [*[h.table for h in self._hits_by_kind], PRICES]:
                table.drop(connection)
        t0 = time.perf_counter()
        for policy in pack.enabled():
            in_python = engines[policy.name] == "python"
            if in_python and (policy.action.name, policy.kind) not in SAVES_MONTHLY_COST:
                price_by_signature(self._session, policy, self._now, self._prices)
        out.seconds_by_step["savings"] = time.perf_counter() - t0
        out.outcomes = [
            PolicyOutcome(p.name, engines[p.name], counts.get(p.name, 0)) for p in pack.enabled()
        ]
        t0 = time.perf_counter()
        out.resolved = self._resolve(names) if resolvable else 0
        out.seconds_by_step["resolve"] = time.perf_counter() - t0
        out.seconds = time.perf_counter() - started
        return out

    # -- one scan per kind -----------------------------------------------------------------
    def _scan_kind(self, kind: ResourceKind, policies: list[Policy]) -> set[str]:
        """Find the resources the kind's compilable policies select, into a new temporary
        table (one narrow row per resource; expanded into opportunities as they are
        written); returns the policies' names."""
        specs = sorted(
            {s for p in policies for s in p.metric_specs},
            key=lambda s: (s.namespace, s.metric, s.statistic, s.days),
        )
        joined = {spec: aliased(MetricSummaryRow, name=f"m{i}") for i, spec in enumerate(specs)}
        leaf_columns = LeafColumns()
        relations = self._relation_joins(policies)
        compiler = SqlCompiler(
            self._dialect,
            self._now,
            {s: (typing.cast(Any, m.id), typing.cast(Any, m.value)) for s, m in joined.items()},
            on_leaf=leaf_columns,
            relations=relations,
        )
        verdicts = [(p, compiler.compile(p.filters)) for p in policies]
        compiled = [(p, v) for p, v in verdicts if v is not None]
        if not compiled:
            return set()
        policies = [p for p, _ in compiled]
        hits = self._hits(kind, compiled, leaf_columns, joined, relations)
        narrow = [c for c in hits.c if c.name not in leaf_columns.names]
        # CREATE TABLE AS, as PostgreSQL runs it with parallel workers (not INSERT SELECT).
        name = f"finops_hits_{len(self._hits_by_kind)}"
        connection = self._session.connection()
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")  # left by a failed run
        into = select(*narrow).into(name, temporary=True)
        t0 = time.perf_counter()
        connection.execute(into)
        self.timings[f"scan {kind.value}"] = time.perf_counter() - t0
        self._hits_by_kind.append(Hits(kind, policies, specs, into.table))
        return {p.name for p in policies}

    def _hits(
        self,
        kind: ResourceKind,
        compiled: list[tuple[Policy, Predicate]],
        leaf_columns: LeafColumns,
        joined: dict[MetricSpec, Any],
        relations: RelationJoins | None,
    ) -> Any:
        """The kind's live rows that some policy selects, with each policy's verdict `p<i>`
        and what the savings and the evidence read."""
        r = ResourceRow
        policies = [p for p, _ in compiled]
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
        if relations is not None:
            source = relations.attach(source)
        kept, tagged = tags_read(self._dialect, policies)
        rows = (
            select(
                r.id.label("rid"),
                r.monthly_cost.label("cost"),
                r.cost_unknown.label("cost_unknown"),
                r.region.label("region"),
                r.state.label("state"),
                # Priced by signature: read once per resource.
                *(
                    [signature(self._dialect, kind, r.attributes).label("sig")]
                    if not self._all_save_cost(policies)
                    else []
                ),
                *([r.tags.label("tags")] if tagged else []),
                *kept.values(),  # under their own names, which the evidence reads
                *leaf_columns.used_by(policies),
                *[m.value.label(f"v{i}") for i, m in enumerate(joined.values())],
            )
            .select_from(source)
            .where(r.kind == kind.value, r.gone_at.is_(None))
        )
        if self._dialect == "postgresql":
            # OFFSET 0 keeps this query apart: PostgreSQL would otherwise inline it and copy
            # each leaf into every verdict (and the WHERE) that uses it. It also keeps the
            # outer query out of the parallel workers, so they filter the rows here: the
            # leader then gathers the hits only, not every row of the kind (0.2 - 0.3 s of
            # 1.4 s for 500,000 instances), and a hit's leaves are computed twice, which
            # costs less.
            selecting = or_(*[leaf_columns.inlined(v) for _, v in compiled])
            rows = rows.where(selecting).offset(0)
        scan = rows.subquery("scan")
        flags = [func.coalesce(v, false()) for _, v in compiled]
        return (
            select(scan, *[flag.label(f"p{i}") for i, flag in enumerate(flags)])
            .where(or_(*flags))
            .subquery("hits")
        )

    def _found_rows(self, found: Hits) -> list[Any]:
        """What the write reads: for each policy, one row per hit it selected (each a scan
        of the kind's narrow table, with the policy's constants as literals)."""
        h = found.table.c
        selects = []
        for i, p in enumerate(found.policies):
            by_cost = self._saves_cost(p)
            number = literal(self._numbers[p.name], BigInteger)
            selects.append(
                select(
                    id_expression(h.rid, number).label("id"),
                    literal(p.name, String).label("policy_name"),
                    h.rid.label("resource_pk"),
                    literal(p.action.name, String).label("action"),
                    self._json(dict(p.action.params)).label("params"),
                    self._evidence(p, found.table, found.specs).label("evidence"),
                    (h.cost if by_cost else null().cast(Float)).label("saving"),
                    (h.cost_unknown if by_cost else null().cast(String)).label("unknown"),
                    h.region,
                    h.state,
                    (null().cast(String) if by_cost else h.sig).label("sig"),
                ).where(h[f"p{i}"])
            )
        return selects

    def _relation_joins(self, policies: list[Policy]) -> RelationJoins | None:
        """The snapshot relations as joins, where the policies read them (PostgreSQL: its
        workers then evaluate them; SQLite reads the subqueries)."""
        relational = any(
            isinstance(leaf, Orphaned | BacksAmi) for p in policies for leaf in leaves(p.filters)
        )
        if self._dialect != "postgresql" or not relational:
            return None
        return RelationJoins(ami_snapshot_keys(self._dialect))

    def _all_save_cost(self, policies: list[Policy]) -> bool:
        return all(self._saves_cost(p) for p in policies)

    def _saves_cost(self, policy: Policy) -> bool:
        return (policy.action.name, policy.kind) in SAVES_MONTHLY_COST

    def _json(self, value: dict[str, Any]) -> Any:
        """A JSON constant that CREATE TABLE AS can render (it inlines every parameter)."""
        text_value = literal(json.dumps(value))
        if self._dialect == "postgresql":
            return text_value.cast(JSONB)
        return func.json(text_value)

    def _price_hits(self) -> None:
        """Price each distinct (policy, region, state, signature) found, once."""
        connection = self._session.connection()
        PRICES.drop(connection, checkfirst=True)
        PRICES.create(connection)
        rows = []
        for found in self._hits_by_kind:
            priced = [(i, p) for i, p in enumerate(found.policies) if not self._saves_cost(p)]
            if not priced:
                continue
            h = found.table.c
            signatures = select(h.region, h.state, h.sig).where(
                or_(*[h[f"p{i}"] for i, _ in priced])
            )
            for region, state, sig in connection.execute(signatures.distinct()):
                stub = pricing_stub(found.kind, region, state, json.loads(sig) if sig else [])
                for _, p in priced:
                    usd = estimate_savings(p.action.name, stub, self._prices, dict(p.action.params))
                    rows.append(
                        {"policy_name": p.name, "region": region, "state": state, "sig": sig}
                        | {"usd": usd.monthly_usd, "why": usd.unknown}
                    )
        if rows:
            connection.execute(PRICES.insert(), rows)
        if self._dialect == "postgresql":
            # Small and known: the planner then hashes it rather than sort what was found.
            connection.exec_driver_sql("ANALYZE finops_prices")

    def _count(self, found: Hits) -> dict[str, int]:
        """How many resources each of the kind's policies selected."""
        h = found.table.c
        counted = select(*[func.count().filter(h[f"p{i}"]) for i in range(len(found.policies))])
        numbers = self._session.execute(counted).one()
        return {p.name: int(n) for p, n in zip(found.policies, numbers, strict=True)}

    def _write_found(self, found: Any, *, known: bool) -> None:
        """Everything found into the table: new ones inserted, known ones updated (and
        reopened if they had been resolved). `known`: some policy of the pack has
        opportunities already."""
        f, p = found.c, PRICES.c
        columns = [
            f.id,
            f.policy_name,
            f.resource_pk,
            f.action,
            f.params,
            f.evidence,
            case((f.sig.is_(None), f.saving), else_=p.usd).label("saving"),
            case((f.sig.is_(None), f.unknown), else_=p.why).label("unknown"),
        ]
        joined = found.outerjoin(
            PRICES,
            and_(
                p.policy_name == f.policy_name,
                p.region == f.region,
                p.state == f.state,
                p.sig == f.sig,
            ),
        )
        connection = self._session.connection()
        if self._dialect == "postgresql":
            source = (
                select(*columns)
                .select_from(joined)
                .compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})
            )
            now = bindparam("now", self._now, type_=OpportunityRow.last_seen.type)
            statement = MERGE if known else INSERT
            connection.execute(text(statement.format(found=source)).bindparams(now))
            return
        names = ["id", "policy_name", "resource_pk", "action", "params", "evidence"]
        names += ["estimated_monthly_savings", "savings_unknown"]
        stmt = sqlite.insert(OpportunityRow).from_select(
            [*names, "status", "first_found", "last_seen"],
            select(
                *columns,
                literal("open"),
                literal(self._now, OpportunityRow.first_found.type),
                literal(self._now, OpportunityRow.last_seen.type),
            )
            .select_from(joined)
            .where(true()),  # SQLite needs a WHERE before ON CONFLICT
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={
                name: stmt.excluded[name] for name in UPDATED_ON_CONFLICT if name != "resolved_at"
            }
            | {"resolved_at": None},
        )
        connection.execute(stmt)

    def _evidence(self, policy: Policy, hits: Any, specs: list[MetricSpec]) -> Any:
        """The tag values and metric summaries the policy looked at, as a JSON object: a
        tag from its kept column where `hits` has it, else from the JSON."""
        pairs: list[Any] = []
        for leaf in leaves(policy.filters):
            if isinstance(leaf, ValueFilter) and leaf.key.startswith("tag:"):
                column = TAG_COLUMNS.get(leaf.key[4:])
                if column is not None and column.key in hits.c:
                    pairs += [leaf.key, hits.c[column.key]]
                else:
                    pairs += [leaf.key, hits.c.tags[leaf.key[4:]].as_string()]
            elif isinstance(leaf, MetricsFilter):
                s = leaf.spec
                pairs += [
                    f"metric.{s.metric}.{s.statistic}.{s.days}d",
                    hits.c[f"v{specs.index(s)}"],
                ]
        build = func.jsonb_build_object if self._dialect == "postgresql" else func.json_object
        return build(*pairs)

    # -- bookkeeping ----------------------------------------------------------------------
    def _any(self, policies: list[str], *where: ColumnElement[bool]) -> bool:
        """Whether these policies have an opportunity (that is so)."""
        found = select(OpportunityRow.id).where(OpportunityRow.policy_name.in_(policies), *where)
        return bool(self._session.scalar(select(found.exists())))

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
