"""The stored-inventory evaluator (SQL where it compiles) selects what Python selects."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import MetricSummaryRow, OpportunityRow, ResourceRow
from backend.core.policy_evaluator import StoredPolicyEvaluator
from backend.core.sql_policies import SqlCompiler
from backend.core.upsert import upsert_rows
from backend.domain.policy import evaluate, load_text
from backend.domain.policy.evaluate import EvaluationContext
from backend.domain.resources import MetricSpec, Resource
from tests.unit.domain.policy.test_properties import inventories, metric_filters, pack_text
from tests.unit.domain.policy.test_properties import value_filters as leaf_values

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def trees() -> st.SearchStrategy[Any]:
    leaves = st.one_of(leaf_values(), metric_filters())
    return st.recursive(
        leaves,
        lambda kids: st.one_of(
            st.builds(lambda xs: {"and": xs}, st.lists(kids, min_size=1, max_size=3)),
            st.builds(lambda xs: {"or": xs}, st.lists(kids, min_size=1, max_size=3)),
            st.builds(lambda xs: {"not": xs}, st.lists(kids, min_size=1, max_size=2)),
        ),
        max_leaves=6,
    )


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


@pytest.fixture
def migrated(any_database: str) -> str:
    upgrade()
    return any_database


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(trees=st.lists(trees(), min_size=1, max_size=3), inventory=inventories())
def test_sql_evaluation_selects_what_python_selects(
    migrated: str, trees: list[Any], inventory: Any
) -> None:
    resources, metrics = inventory
    pack = load_text(pack_text(trees), "generated.yml")
    store(resources, metrics)
    ctx = EvaluationContext.from_resources(resources, now=NOW, metrics=metrics)
    expected: dict[str, set[str]] = {}
    for m in evaluate(pack, resources, ctx):
        expected.setdefault(m.policy.name, set()).add(m.resource.resource_id)
    assert stored_selection(pack) == expected


def test_reference_policies_compile_to_sql(migrated: str) -> None:
    from pathlib import Path

    from backend.domain.policy import load_pack

    root = Path(__file__).resolve().parents[2]
    pack = load_pack([root / "bench" / "reference-pack.yml"])
    with session_scope() as session:
        dialect = session.get_bind().dialect.name
    compiled = {
        p.name: SqlCompiler(dialect, NOW).compile(p.filters) is not None for p in pack.policies
    }
    assert [name for name, ok in compiled.items() if not ok] == []


def test_opportunities_keep_their_history(migrated: str) -> None:
    pack = load_text(
        "policies:\n  - name: idle\n    resource: ec2\n    filters:\n"
        "      - {type: metrics, name: CPUUtilization, statistic: Average, days: 14,"
        " op: lt, value: 5}\n    action: stop\n",
        "p.yml",
    )
    spec = MetricSpec("AWS/EC2", "CPUUtilization", "Average", 14)
    a = Resource(
        kind=pack.policies[0].kind,
        resource_id="i-a",
        account_id="1",
        region="us-east-1",
        state="running",
    )
    b = Resource(
        kind=a.kind, resource_id="i-b", account_id="1", region="us-east-1", state="running"
    )
    store([a, b], {("i-a", spec): 1.0, ("i-b", spec): 50.0})
    with session_scope() as session:
        first = StoredPolicyEvaluator(session, now=NOW).run(pack)
    assert [o.engine for o in first.outcomes] == ["sql"]
    with session_scope() as session:
        row = session.scalars(select(OpportunityRow)).one()
        assert row.status == "open"
        assert row.evidence == {"metric.CPUUtilization.Average.14d": 1.0}
        assert row.estimated_monthly_savings == 10.0
        session.execute(MetricSummaryRow.__table__.update().values(value=80.0))
    later = NOW + dt.timedelta(days=1)
    with session_scope() as session:
        second = StoredPolicyEvaluator(session, now=later).run(pack)
    assert second.resolved == 1
    with session_scope() as session:
        row = session.scalars(select(OpportunityRow)).one()
        assert (row.status, row.resolved_at, row.first_found) == ("resolved", later, NOW)
