"""The stored-inventory evaluator (SQL where it compiles) selects what Python selects."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select, update

from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import (
    InventoryPartRow,
    MetricSummaryRow,
    OpportunityRow,
    ResourceRow,
    ScanRunRow,
)
from backend.core.policy_evaluator import StoredPolicyEvaluator
from backend.core.repositories import RELATION_KINDS
from backend.core.sql_policies import SqlCompiler
from backend.core.upsert import upsert_rows
from backend.domain.policy import evaluate, load_text
from backend.domain.policy.evaluate import EvaluationContext
from backend.domain.resources import MetricSpec, Resource, ResourceKind
from tests.unit.domain.policy.test_properties import inventories, metric_filters, pack_text
from tests.unit.domain.policy.test_properties import value_filters as leaf_values

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


# Around the 30-day boundary to the second, and None: an undated resource is UNKNOWN in
# both evaluators, so a `not` around an age filter must not select it.
MOMENTS = [None, NOW - dt.timedelta(days=30), NOW - dt.timedelta(days=30, seconds=1),
           NOW - dt.timedelta(days=30) + dt.timedelta(seconds=1), NOW - dt.timedelta(days=2),
           NOW - dt.timedelta(days=400)]  # fmt: skip


@st.composite
def age_filters(draw: st.DrawFn) -> dict[str, Any]:
    return {"type": "age", "of": draw(st.sampled_from(["created", "state-changed"])),
            "days": draw(st.sampled_from([1, 30])),
            "op": draw(st.sampled_from(["gt", "ge", "lt", "le"]))}  # fmt: skip


@st.composite
def dated_inventories(draw: st.DrawFn) -> tuple[list[Resource], dict[Any, float | None]]:
    fleet, metrics = draw(inventories())
    dated = [
        replace(
            r,
            created_at=draw(st.sampled_from(MOMENTS)),
            state_changed_at=draw(st.sampled_from(MOMENTS)),
        )
        for r in fleet
    ]
    return dated, metrics


def trees() -> st.SearchStrategy[Any]:
    leaves = st.one_of(leaf_values(), metric_filters(), age_filters())
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


def _one(
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


@pytest.fixture
def migrated(any_database: str) -> str:
    upgrade()
    return any_database


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(trees=st.lists(trees(), min_size=1, max_size=3), inventory=dated_inventories())
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


@pytest.mark.parametrize("op", ["gt", "ge", "lt", "le"])
def test_an_undated_resource_is_neither_old_nor_young_in_sql_and_python(
    migrated: str, op: str
) -> None:
    age = f"{{type: age, of: state-changed, days: 30, op: {op}}}"
    pack = load_text(
        "policies:\n"
        f"  - {{name: aged, resource: ec2, filters: [{age}]}}\n"
        f"  - {{name: negated, resource: ec2, filters: [{{not: [{age}]}}]}}\n",
        "p.yml",
    )
    fleet = [
        replace(_one(ResourceKind.EC2_INSTANCE, rid, "stopped"), state_changed_at=moment)
        for rid, moment in [
            ("i-exact", NOW - dt.timedelta(days=30)),
            ("i-older", NOW - dt.timedelta(days=30, seconds=1)),
            ("i-younger", NOW - dt.timedelta(days=30) + dt.timedelta(seconds=1)),
            ("i-undated", None),
        ]
    ]
    store(fleet, {})
    ctx = EvaluationContext.from_resources(fleet, now=NOW)
    python: dict[str, set[str]] = {}
    for m in evaluate(pack, fleet, ctx):
        python.setdefault(m.policy.name, set()).add(m.resource.resource_id)
    sql = stored_selection(pack)
    assert sql == python
    assert all("i-undated" not in chosen for chosen in sql.values()), sql


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


MIXED_PACK = """
policies:
  - name: idle-dev
    resource: ec2
    filters:
      - {type: value, key: "tag:env", op: ne, value: prod}
      - {type: metrics, name: CPUUtilization, statistic: Average, days: 14, op: lt, value: 5}
    action: stop
  - name: old-family
    resource: ec2
    filters:
      - {type: value, key: "tag:env", op: ne, value: prod}
      - {type: value, key: InstanceType, op: regex, value: "m4\\\\."}
    action: {type: resize, instance-type: t3.medium}
  - name: gp2
    resource: ebs
    filters:
      - VolumeType: gp2
    action: {type: modify-volume, volume-type: gp3}
  - name: loose-ip
    resource: elastic-ip
    filters:
      - AssociationId: absent
    action: release
  - name: shouty
    resource: ec2
    filters:
      - {type: value, key: "tag:env", value: DEV, case: insensitive}
    action: {type: resize, instance-type: t3.medium}
"""


def test_each_policy_writes_its_action_evidence_and_savings(migrated: str) -> None:
    """Several kinds in one run, a leaf shared by two policies, monthly cost and priced
    savings, and a policy SQL cannot express evaluated in Python beside the others."""
    from backend.domain.pricing import PRICING_FIELDS, PriceTable, estimate_savings, pricing_stub

    pack = load_text(MIXED_PACK, "mixed.yml")
    kinds = {p.name: p.kind for p in pack.policies}
    cpu = MetricSpec("AWS/EC2", "CPUUtilization", "Average", 14)
    fleet = [
        Resource(kinds["idle-dev"], "i-old", "1", "us-east-1", "running", {"env": "dev"},
                 {"InstanceType": "m4.large", "State": {"Name": "running"}}),
        Resource(kinds["idle-dev"], "i-prod", "1", "us-east-1", "running", {"env": "prod"},
                 {"InstanceType": "m4.large", "State": {"Name": "running"}}),
        Resource(kinds["gp2"], "vol-1", "1", "eu-west-1", "in-use", {},
                 {"VolumeType": "gp2", "Size": 100}),
        Resource(kinds["gp2"], "vol-2", "1", "eu-west-1", "in-use", {},
                 {"VolumeType": "gp3", "Size": 100}),
        Resource(kinds["loose-ip"], "eip-1", "1", "us-east-1", "unassociated", {}, {}),
        Resource(kinds["loose-ip"], "eip-2", "1", "us-east-1", "associated", {},
                 {"AssociationId": "a-1"}),
    ]  # fmt: skip
    store(fleet, {("i-old", cpu): 1.5, ("i-prod", cpu): 1.0})
    with session_scope() as session:
        outcome = StoredPolicyEvaluator(session, now=NOW).run(pack)
    assert {(o.policy, o.engine, o.matched) for o in outcome.outcomes} == {
        ("idle-dev", "sql", 1),
        ("old-family", "sql", 1),
        ("gp2", "sql", 1),
        ("loose-ip", "sql", 1),
        ("shouty", "python", 1),
    }
    with session_scope() as session:
        rows = {
            (o.policy_name, rid): o
            for o, rid in session.execute(
                select(OpportunityRow, ResourceRow.resource_id).join(
                    ResourceRow, ResourceRow.id == OpportunityRow.resource_pk
                )
            )
        }
        assert set(rows) == {
            ("idle-dev", "i-old"),
            ("old-family", "i-old"),
            ("gp2", "vol-1"),
            ("loose-ip", "eip-1"),
            ("shouty", "i-old"),
        }
        assert all(
            (o.status, o.first_found, o.last_seen) == ("open", NOW, NOW) for o in rows.values()
        )

        def priced(policy: str, r: Resource) -> float | None:
            p = next(p for p in pack.policies if p.name == policy)
            values = [pricing_stub_value(r.attributes, f) for f in PRICING_FIELDS[r.kind]]
            stub = pricing_stub(r.kind, r.region, r.state, values)
            return estimate_savings(
                p.action.name, stub, PriceTable.shipped(), dict(p.action.params)
            ).monthly_usd

        idle, old = rows[("idle-dev", "i-old")], rows[("old-family", "i-old")]
        assert (idle.action, idle.params, idle.estimated_monthly_savings) == ("stop", {}, 10.0)
        assert idle.evidence == {"tag:env": "dev", "metric.CPUUtilization.Average.14d": 1.5}
        params = {p.name: dict(p.action.params) for p in pack.policies}
        assert (old.action, old.params) == ("resize", params["old-family"])
        assert old.params
        assert old.evidence == {"tag:env": "dev"}
        assert old.estimated_monthly_savings == priced("old-family", fleet[0])
        assert old.estimated_monthly_savings is not None
        gp2 = rows[("gp2", "vol-1")]
        assert (gp2.params, gp2.evidence) == (params["gp2"], {})
        assert gp2.estimated_monthly_savings == priced("gp2", fleet[2])
        assert gp2.estimated_monthly_savings is not None
        assert rows[("loose-ip", "eip-1")].estimated_monthly_savings == 10.0
        # priced the same way when the policy ran in Python
        shouty = rows[("shouty", "i-old")]
        assert shouty.estimated_monthly_savings == old.estimated_monthly_savings


def pricing_stub_value(attributes: dict[str, Any], path: str) -> Any:
    node: Any = attributes
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def test_an_opportunity_found_again_is_reopened_with_its_history(migrated: str) -> None:
    pack = load_text(
        "policies:\n  - name: unattached\n    resource: ebs\n    filters:\n"
        "      - State: available\n    action: delete\n",
        "p.yml",
    )
    kind = pack.policies[0].kind
    vol = Resource(kind, "vol-1", "1", "us-east-1", "available", {}, {"State": "available"})
    other = Resource(kind, "vol-2", "1", "us-east-1", "available", {}, {"State": "available"})
    store([vol, other], {})
    days = [NOW + dt.timedelta(days=d) for d in range(3)]

    def evaluate_on(day: dt.datetime, state: str) -> Any:
        with session_scope() as session:
            session.execute(
                ResourceRow.__table__.update()
                .where(ResourceRow.resource_id == "vol-1")
                .values(attributes={"State": state})
            )
        with session_scope() as session:
            return StoredPolicyEvaluator(session, now=day).run(pack)

    def vol_1() -> tuple[str, Any, Any, Any]:
        with session_scope() as session:
            row = session.execute(
                select(OpportunityRow)
                .join(ResourceRow, ResourceRow.id == OpportunityRow.resource_pk)
                .where(ResourceRow.resource_id == "vol-1")
            ).scalar_one()
            return row.status, row.first_found, row.last_seen, row.resolved_at

    assert evaluate_on(days[0], "available").outcomes[0].matched == 2
    assert evaluate_on(days[1], "in-use").resolved == 1
    assert vol_1() == ("resolved", days[0], days[0], days[1])
    again = evaluate_on(days[2], "available")
    assert (again.outcomes[0].matched, again.resolved) == (2, 0)
    assert vol_1() == ("open", days[0], days[2], None)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(OpportunityRow)) == 2


@pytest.mark.parametrize("compiled", [True, False], ids=["sql", "python"])
def test_relations_are_unknown_where_the_volumes_were_never_listed(
    migrated: str, compiled: bool
) -> None:
    """A snapshot whose volume has no row is an orphan only where a scan listed the
    region's volumes and AMIs whole (AccessDenied on DescribeVolumes lists nothing)."""
    snapshot = _one(ResourceKind.EBS_SNAPSHOT, "snap-1", "completed", VolumeId="vol-live")
    # `case: insensitive` does not compile: the policy then runs in Python
    extra = '      - {type: value, key: "tag:team", op: ne, value: X, case: insensitive}\n'
    pack = load_text(
        "policies:\n  - name: orphans\n    resource: ebs-snapshot\n    filters:\n"
        + "      - orphaned\n      - not: [backs-ami]\n"
        + ("" if compiled else extra)
        + "    action: {type: delete, backup: false}\n",
        "p.yml",
    )
    store([snapshot], {})
    with session_scope() as session:
        mark_listed(set(), session)
    assert stored_selection(pack) == {}
    with session_scope() as session:
        mark_listed({("111111111111", "us-east-1")}, session)
    assert stored_selection(pack) == {"orphans": {"snap-1"}}
    with session_scope() as session:
        engines = {
            o.policy: o.engine for o in StoredPolicyEvaluator(session, now=NOW).run(pack).outcomes
        }
    assert engines == {"orphans": "sql" if compiled else "python"}


def _ec2(tags: dict[str, str]) -> Resource:
    return _one(ResourceKind.EC2_INSTANCE, "i-1", "running", tags, InstanceType="m5.large")


@pytest.mark.parametrize(
    ("leaf", "tags"),
    [
        ('{type: value, key: "tag:cores", op: gt, value: 2}', {"cores": "1e400"}),
        ('{type: value, key: "tag:cores", op: gt, value: 2}', {"cores": "1_000"}),
        ('{type: value, key: "tag:cores", op: gt, value: 2}', {"cores": "\u0663"}),
        ('{type: value, key: "tag:cores", op: gt, value: 2}', {"cores": "infinity"}),
        ('{type: value, key: "tag:cores", op: gt, value: 2}', {"cores": " 3.5 "}),
        ("{type: value, key: \"tag:team\", op: regex, value: 'dev\\b'}", {"team": "dev-1"}),
        ("{type: value, key: \"tag:team\", op: regex, value: '[[:digit:]]+x'}", {"team": "12x"}),
    ],
)
def test_sql_and_python_agree_on_odd_numbers_and_regexes(
    migrated: str, leaf: str, tags: dict[str, str]
) -> None:
    """Text Python's float() reads but a database does not (or overflows on), and regex
    escapes that mean something else in PostgreSQL: one verdict on both paths, no error."""
    pack = load_text(
        f"policies:\n  - name: p\n    resource: ec2\n    filters:\n      - {leaf}\n", "p.yml"
    )
    resources = [_ec2(tags)]
    store(resources, {})
    ctx = EvaluationContext.from_resources(resources, now=NOW)
    python = {m.policy.name: {m.resource.resource_id} for m in evaluate(pack, resources, ctx)}
    assert stored_selection(pack) == python


def test_a_snapshot_of_a_deleted_volume_is_an_orphan_in_sql_too(migrated: str) -> None:
    volume = _one(ResourceKind.EBS_VOLUME, "vol-1", "deleted", VolumeType="gp3", Size=8)
    snapshot = _one(ResourceKind.EBS_SNAPSHOT, "snap-1", "completed", VolumeId="vol-1")
    pack = load_text(
        "policies:\n  - {name: o, resource: ebs-snapshot, filters: [orphaned], action: report}\n",
        "p.yml",
    )
    store([volume, snapshot], {})
    assert stored_selection(pack) == {"o": {"snap-1"}}


@pytest.mark.parametrize("compiled", [True, False], ids=["sql", "python"])
def test_a_stop_saves_the_resource_s_cost_or_says_why_it_is_unknown(
    migrated: str, compiled: bool
) -> None:
    """The saving of a stop is the instance's monthly cost; an instance the price table
    cannot price (Windows) carries the reason, on both paths."""
    leaf = '{type: value, key: "tag:env", op: ne, value: PROD'
    leaf += "}" if compiled else ", case: insensitive}"
    text = f"policies:\n  - name: s\n    resource: ec2\n    filters: [{leaf}]\n    action: stop\n"
    pack = load_text(text, "p.yml")
    store([_ec2({"env": "dev"})], {})
    saving = select(OpportunityRow.estimated_monthly_savings, OpportunityRow.savings_unknown)
    with session_scope() as session:
        outcomes = StoredPolicyEvaluator(session, now=NOW).run(pack).outcomes
        assert [o.engine for o in outcomes] == ["sql" if compiled else "python"]
    with session_scope() as session:
        assert session.execute(saving).tuples().all() == [(10.0, None)]
        why = "no price for Windows instances (the table is Linux/UNIX)"
        session.execute(update(ResourceRow).values(monthly_cost=None, cost_unknown=why))
    with session_scope() as session:
        StoredPolicyEvaluator(session, now=NOW).run(pack)
    with session_scope() as session:
        assert session.execute(saving).tuples().all() == [(None, why)]
