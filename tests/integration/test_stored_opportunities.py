"""Opportunities over time and what each one records: found, resolved, found again; the
action, the evidence and the savings of each policy, priced in SQL or in Python."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select, update

from backend.core.database import session_scope
from backend.core.models import MetricSummaryRow, OpportunityRow, ResourceRow
from backend.core.policy_evaluator import StoredPolicyEvaluator
from backend.domain.policy import load_text
from backend.domain.resources import MetricSpec, Resource
from tests.integration.stored_support import NOW, ec2_instance, store


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
def test_a_stop_saves_the_resource_s_cost_or_says_why_it_is_unknown(
    migrated: str, compiled: bool
) -> None:
    """The saving of a stop is the instance's monthly cost; an instance the price table
    cannot price (Windows) carries the reason, on both paths."""
    leaf = '{type: value, key: "tag:env", op: ne, value: PROD'
    leaf += "}" if compiled else ", case: insensitive}"
    text = f"policies:\n  - name: s\n    resource: ec2\n    filters: [{leaf}]\n    action: stop\n"
    pack = load_text(text, "p.yml")
    store([ec2_instance({"env": "dev"})], {})
    saving = select(OpportunityRow.estimated_monthly_savings, OpportunityRow.savings_unknown)
    with session_scope() as session:
        outcomes = StoredPolicyEvaluator(session, now=NOW).run(pack).outcomes
        assert [o.engine for o in outcomes] == ["sql" if compiled else "python"]
    with session_scope() as session:
        assert session.execute(saving).all() == [(10.0, None)]
        why = "no price for Windows instances (the table is Linux/UNIX)"
        session.execute(update(ResourceRow).values(monthly_cost=None, cost_unknown=why))
    with session_scope() as session:
        StoredPolicyEvaluator(session, now=NOW).run(pack)
    with session_scope() as session:
        assert session.execute(saving).all() == [(None, why)]
