"""The parts of a stored evaluation: its temporary tables, its statements, its leaves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, Column, ColumnElement, Float, MetaData, String, Table, column
from sqlalchemy.sql.elements import ColumnClause
from sqlalchemy.sql.visitors import replacement_traverse

from backend.core.sql_policies import Predicate, leaves
from backend.domain.policy.filters import Filter
from backend.domain.policy.model import Policy
from backend.domain.resources import MetricSpec, ResourceKind

# Each distinct (policy, region, state, pricing signature) found, priced once; the write
# looks up the opportunities priced by signature (`sig` not NULL) here.
PRICES = Table(
    "finops_prices",
    MetaData(),
    Column("policy_name", String),
    Column("region", String),
    Column("state", String),
    Column("sig", String),
    Column("usd", Float),
    Column("why", String),  # why usd is unknown, if it is
    prefixes=["TEMPORARY"],
)
# One join of what was found with the table, on the key: the new are inserted, the known
# updated in place (same page, no index entry: HOT, as the table keeps room for it, see
# 0002).
MERGE = """
MERGE INTO opportunities AS o USING ({found}) AS f ON o.id = f.id
WHEN MATCHED THEN UPDATE SET action = f.action, params = f.params, evidence = f.evidence,
    estimated_monthly_savings = f.saving, savings_unknown = f.unknown, status = 'open',
    last_seen = :now, resolved_at = NULL
WHEN NOT MATCHED THEN INSERT (id, policy_name, resource_pk, action, params, evidence,
    estimated_monthly_savings, savings_unknown, status, first_found, last_seen)
    VALUES (f.id, f.policy_name, f.resource_pk, f.action, f.params, f.evidence, f.saving,
    f.unknown, 'open', :now, :now)
"""
# When none of the pack's policies has an opportunity yet (a first evaluation), nothing can
# match: a plain insert, without the join.
INSERT = """
INSERT INTO opportunities (id, policy_name, resource_pk, action, params, evidence,
    estimated_monthly_savings, savings_unknown, status, first_found, last_seen)
SELECT f.id, f.policy_name, f.resource_pk, f.action, f.params, f.evidence, f.saving,
    f.unknown, 'open', :now, :now FROM ({found}) AS f
"""


@dataclass
class Hits:
    """A kind's hits, kept in a temporary table: one row per resource some policy selected,
    with each policy's verdict `p<i>` and what the evidence and the savings read."""

    kind: ResourceKind
    policies: list[Policy]  # those compiled, in verdict order
    specs: list[MetricSpec]  # the metric values `v<i>`, in this order
    table: Table


class LeafColumns:
    """Each distinct leaf of a kind's policies computed once, as a column of the inner scan:
    PostgreSQL does not share common subexpressions, and the leaves (JSON lookups, regexes)
    are most of a scan's cost. Equal leaves have equal reprs (which keep 1 and True apart)."""

    def __init__(self) -> None:
        self.predicates: dict[str, tuple[str, Predicate]] = {}

    def __call__(self, node: Filter, predicate: Predicate) -> Predicate:
        key = repr(node)
        if key not in self.predicates:
            self.predicates[key] = (f"l{len(self.predicates)}", predicate)
        return column(self.predicates[key][0], Boolean)

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.predicates.values()}

    def inlined(self, verdict: Predicate) -> Predicate:
        """The verdict over the leaves themselves instead of their columns (for a WHERE in
        the query that computes the columns)."""
        by_name = dict(self.predicates.values())

        def leaf(element: Any, **_kw: Any) -> Any:
            is_leaf = isinstance(element, ColumnClause) and element.table is None
            return by_name.get(element.name) if is_leaf else None

        return replacement_traverse(verdict, {}, leaf)

    def used_by(self, policies: list[Policy]) -> list[ColumnElement[Any]]:
        """The labelled leaves of these policies (not those of one that failed to compile)."""
        keys = {repr(leaf) for p in policies for leaf in leaves(p.filters)}
        return [pred.label(name) for key, (name, pred) in self.predicates.items() if key in keys]
