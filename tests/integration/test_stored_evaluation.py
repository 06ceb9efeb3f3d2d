"""The stored-inventory evaluator (SQL where it compiles) selects what Python selects."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from backend.core.database import session_scope
from backend.core.policy_evaluator import StoredPolicyEvaluator
from backend.core.sql_policies import SqlCompiler
from backend.domain.policy import evaluate, load_text
from backend.domain.policy.evaluate import EvaluationContext
from backend.domain.resources import Resource, ResourceKind
from tests.integration.stored_support import (
    NOW,
    ec2_instance,
    mark_listed,
    one,
    store,
    stored_selection,
)
from tests.unit.domain.policy.test_properties import inventories, metric_filters, pack_text
from tests.unit.domain.policy.test_properties import value_filters as leaf_values

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
        replace(one(ResourceKind.EC2_INSTANCE, rid, "stopped"), state_changed_at=moment)
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


@pytest.mark.parametrize("compiled", [True, False], ids=["sql", "python"])
def test_relations_are_unknown_where_the_volumes_were_never_listed(
    migrated: str, compiled: bool
) -> None:
    """A snapshot whose volume has no row is an orphan only where a scan listed the
    region's volumes and AMIs whole (AccessDenied on DescribeVolumes lists nothing)."""
    snapshot = one(ResourceKind.EBS_SNAPSHOT, "snap-1", "completed", VolumeId="vol-live")
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
    resources = [ec2_instance(tags)]
    store(resources, {})
    ctx = EvaluationContext.from_resources(resources, now=NOW)
    python = {m.policy.name: {m.resource.resource_id} for m in evaluate(pack, resources, ctx)}
    assert stored_selection(pack) == python


def test_a_snapshot_of_a_deleted_volume_is_an_orphan_in_sql_too(migrated: str) -> None:
    volume = one(ResourceKind.EBS_VOLUME, "vol-1", "deleted", VolumeType="gp3", Size=8)
    snapshot = one(ResourceKind.EBS_SNAPSHOT, "snap-1", "completed", VolumeId="vol-1")
    pack = load_text(
        "policies:\n  - {name: o, resource: ebs-snapshot, filters: [orphaned], action: report}\n",
        "p.yml",
    )
    store([volume, snapshot], {})
    assert stored_selection(pack) == {"o": {"snap-1"}}


KEPT_LEAVES = """policies:
  - {name: type-eq, resource: ec2, filters: [{InstanceType: m5.large}]}
  - {name: type-ne, resource: ec2, filters: [{type: value, key: InstanceType, op: ne, value: m5.large}]}
  - {name: type-in, resource: ec2, filters: [{type: value, key: InstanceType, op: in, value: [m5.large, t3.micro]}]}
  - {name: type-regex, resource: ec2, filters: [{type: value, key: InstanceType, op: regex, value: "m5"}]}
  - {name: type-regex-case, resource: ec2, filters: [{type: value, key: InstanceType, op: regex-case, value: "m5"}]}
  - {name: type-absent, resource: ec2, filters: [{InstanceType: absent}]}
  - {name: state-eq, resource: ec2, filters: [{"State.Name": running}]}
  - {name: state-not-in, resource: ec2, filters: [{type: value, key: State.Name, op: not-in, value: [running]}]}
  - {name: volume-eq, resource: ec2, filters: [{VolumeType: gp2}]}
  - {name: schedule-eq, resource: ec2, filters: [{"tag:finops:schedule": office-hours}]}
  - {name: schedule-absent, resource: ec2, filters: [{"tag:finops:schedule": absent}]}
  - {name: opt-out-present, resource: ec2, filters: [{"tag:finops:opt-out": present}]}
"""  # noqa: E501


def test_leaves_on_the_kept_columns_select_what_python_selects(migrated: str) -> None:
    """PostgreSQL reads the hottest leaves from columns it keeps (migration 0012): an
    attribute's column holds its text only when it is a JSON string. The same verdicts as
    Python on strings, numbers, lists, objects, nulls and missing keys, any case."""
    variants: list[tuple[dict[str, str], dict[str, Any]]] = [
        ({"finops:schedule": "office-hours"},
         {"InstanceType": "m5.large", "State": {"Name": "running"}, "VolumeType": "gp2"}),
        ({}, {"InstanceType": 5, "State": {"Name": 1}, "VolumeType": None}),
        ({"finops:schedule": ""}, {"InstanceType": ["m5.large"], "State": ["running"]}),
        ({"finops:opt-out": "true"}, {"InstanceType": {"m5.large": 1}, "State": "running"}),
        ({"finops:schedule": "Office-Hours"}, {}),
        ({}, {"InstanceType": "M5.LARGE", "State": {"Name": "RUNNING"}, "VolumeType": "GP2"}),
    ]  # fmt: skip
    resources = [
        one(ResourceKind.EC2_INSTANCE, f"i-{n}", "running", tags, **attributes)
        for n, (tags, attributes) in enumerate(variants)
    ]
    pack = load_text(KEPT_LEAVES, "kept.yml")
    store(resources, {})
    ctx = EvaluationContext.from_resources(resources, now=NOW)
    python: dict[str, set[str]] = {}
    for m in evaluate(pack, resources, ctx):
        python.setdefault(m.policy.name, set()).add(m.resource.resource_id)
    assert stored_selection(pack) == python
    assert python["type-eq"] == {"i-0"} and python["schedule-eq"] == {"i-0"}  # not vacuous
    with session_scope() as session:
        dialect = session.get_bind().dialect.name
    if dialect == "postgresql":  # and the columns are what it read
        compiled = " ".join(
            str(SqlCompiler(dialect, NOW).compile(p.filters)) for p in pack.policies
        )
        for column in ("instance_type", "state_name", "volume_type", "tag_schedule"):
            assert f"resources.{column}" in compiled


def test_the_planner_settings_are_the_callers_again_after_an_evaluation(migrated: str) -> None:
    """The evaluator's planner settings (parallel plans whatever the estimates, no JIT) are
    for its own statements: the caller's next ones in the transaction get theirs back."""
    with session_scope() as session:
        if session.get_bind().dialect.name != "postgresql":
            pytest.skip("PostgreSQL's planner settings")
        store([ec2_instance({"env": "dev"})], {})
        session.execute(text("SET LOCAL parallel_setup_cost = 123"))
        names = ("parallel_setup_cost", "parallel_tuple_cost", "jit", "work_mem")
        before = [session.scalar(text(f"SHOW {name}")) for name in names]
        pack = load_text(KEPT_LEAVES, "kept.yml")
        assert StoredPolicyEvaluator(session, now=NOW).run(pack).outcomes  # it ran
        assert [session.scalar(text(f"SHOW {name}")) for name in names] == before
        assert before[0] == "123"


def test_a_snapshot_two_amis_name_is_one_opportunity_and_half_listed_is_unknown(
    migrated: str,
) -> None:
    """The relations as joins (PostgreSQL) match at most one row each: a snapshot behind two
    AMIs is selected once, by what Python selects; and a region whose volumes were listed
    but not its AMIs leaves the relations unknown."""

    def ami(rid: str, snapshot: str) -> Resource:
        return one(
            ResourceKind.AMI, rid, "available",
            BlockDeviceMappings=[{"Ebs": {"SnapshotId": snapshot}}],
        )  # fmt: skip

    backed = one(ResourceKind.EBS_SNAPSHOT, "snap-backed", "completed", VolumeId="vol-gone")
    orphan = one(ResourceKind.EBS_SNAPSHOT, "snap-orphan", "completed", VolumeId="vol-gone")
    resources = [backed, orphan, ami("ami-1", "snap-backed"), ami("ami-2", "snap-backed")]
    pack = load_text(
        "policies:\n"
        "  - {name: behind-ami, resource: ebs-snapshot, filters: [backs-ami]}\n"
        "  - {name: orphans, resource: ebs-snapshot, filters: [orphaned, {not: [backs-ami]}]}\n",
        "p.yml",
    )
    store(resources, {})
    with session_scope() as session:
        mark_listed({("111111111111", "us-east-1")}, session)
    ctx = EvaluationContext.from_resources(
        resources, now=NOW, inventoried=[("111111111111", "us-east-1")]
    )
    python: dict[str, set[str]] = {}
    for m in evaluate(pack, resources, ctx):
        python.setdefault(m.policy.name, set()).add(m.resource.resource_id)
    assert python == {"behind-ami": {"snap-backed"}, "orphans": {"snap-orphan"}}
    assert stored_selection(pack) == python
    with session_scope() as session:
        rows = session.scalar(text("SELECT count(*) FROM opportunities"))
    assert rows == 2  # one each, not one per AMI
    store(resources, {})  # again, without the opportunities found above
    with session_scope() as session:  # the volumes listed, the AMIs not
        session.execute(text("DELETE FROM inventory_parts WHERE kind = 'ami'"))
    assert stored_selection(pack) == {}
