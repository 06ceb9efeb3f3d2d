"""Property tests: the engine agrees with a plain reference evaluator on random input.

The reference below is written separately from the engine, straight from the documented
rules, over the same YAML-ish dict form the policies are written in. It is two-valued: all
metrics are present (a value, or None for no datapoints).
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.domain.policy import Truth, evaluate, load_text
from backend.domain.resources import MetricSpec, Resource, ResourceKind

from .helpers import NOW, ctx

SPECS = {
    ("CPUUtilization", "Average", 14): MetricSpec("AWS/EC2", "CPUUtilization", "Average", 14),
    ("CPUUtilization", "Maximum", 14): MetricSpec("AWS/EC2", "CPUUtilization", "Maximum", 14),
    ("NetworkIn", "Sum", 7): MetricSpec("AWS/EC2", "NetworkIn", "Sum", 7),
}
KEYS = ["tag:env", "tag:team", "tag:finops:opt-out", "InstanceType", "State.Name", "Cores",
        "Ratio", "state", "region", "Missing.Path"]  # fmt: skip
# small pools shared by policies and resources, so that comparisons often meet
TEXTS = ["prod", "dev", "Dev", "", "5", "2.5", "t2.micro", "running", "true"]
NUMBERS = [0, 5, 2.5, -1]
PATTERNS = ["t2", "^(t2|m4)\\.", "dev", "D", ".*", "[0-9]+", "run", "T2\\.M"]
OP_ALIASES = {"equal": "eq", "not-equal": "ne", "ni": "not-in", "greater-than": "gt",
              "gte": "ge", "less-than": "lt", "lte": "le"}  # fmt: skip

# --- the reference evaluator -------------------------------------------------------------


def field_value(r: Resource, key: str) -> Any:
    if key.startswith("tag:"):
        return r.tags.get(key[4:])
    record = {"state": r.state, "region": r.region, "account": r.account_id,
              "id": r.resource_id, "kind": r.kind.value}  # fmt: skip
    if key in record:
        return record[key]
    value: Any = r.attributes
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def number_of(x: Any) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, int | float):
        return float(x)
    if isinstance(x, str):
        try:
            n = float(x)
        except ValueError:
            return None
        return None if n != n else n
    return None


def same(a: Any, e: Any) -> bool:
    if isinstance(e, bool):
        if isinstance(a, str) and a.lower() in ("true", "false"):
            a = a.lower() == "true"
        return isinstance(a, bool) and a == e
    if isinstance(a, bool):
        return False
    if isinstance(e, int | float):
        n = number_of(a)
        return n is not None and n == e
    if isinstance(a, int | float):
        n = number_of(e)
        return n is not None and a == n
    return isinstance(a, str) and isinstance(e, str) and a == e


def order(op: str, a: Any, e: Any) -> bool:
    if isinstance(a, bool) or isinstance(e, bool):
        return False
    if isinstance(e, int | float) or isinstance(a, int | float):
        x, y = number_of(a), number_of(e)
        if x is None or y is None:
            return False
        if not (isinstance(a, int | float) or isinstance(e, int | float)):
            return False
    elif isinstance(a, str) and isinstance(e, str):
        x, y = a, e  # type: ignore[assignment]
    else:
        return False
    return {"gt": x > y, "ge": x >= y, "lt": x < y, "le": x <= y}[op]  # type: ignore[operator]


def ref_value(key: str, op: str, expected: Any, fold: bool, r: Resource) -> bool:
    op = OP_ALIASES.get(op, op)
    actual = field_value(r, key)
    if expected == "absent":
        return (actual is None) != (op == "ne")
    if expected == "present":
        return (actual is not None) != (op == "ne")
    if actual is None:
        return op in ("ne", "not-in")

    def f(x: Any) -> Any:
        return x.casefold() if fold and isinstance(x, str) else x

    actual = f(actual)
    if op == "eq":
        return same(actual, f(expected))
    if op == "ne":
        return not same(actual, f(expected))
    if op == "in":
        return any(same(actual, f(e)) for e in expected)
    if op == "not-in":
        return not any(same(actual, f(e)) for e in expected)
    if op in ("regex", "regex-case"):
        flags = re.IGNORECASE if op == "regex" else 0
        return isinstance(actual, str) and re.match(expected, actual, flags) is not None
    return order(op, actual, f(expected))


def ref_eval(node: Any, r: Resource, metrics: dict[tuple[str, MetricSpec], float | None]) -> bool:
    if "and" in node:
        return all(ref_eval(c, r, metrics) for c in node["and"])
    if "or" in node:
        return any(ref_eval(c, r, metrics) for c in node["or"])
    if "not" in node:
        return not all(ref_eval(c, r, metrics) for c in node["not"])
    kind = node.get("type")
    if kind == "metrics":
        value = metrics[(r.resource_id, SPECS[(node["name"], node["statistic"], node["days"])])]
        if value is None:
            if "missing-value" not in node:
                return False
            value = node["missing-value"]
        op, limit = node["op"], float(node["value"])
        outcomes = {"lt": value < limit, "le": value <= limit, "gt": value > limit,
                    "ge": value >= limit}  # fmt: skip
        return outcomes[op]
    if kind in ("value", "tag"):
        key = f"tag:{node['key']}" if kind == "tag" else node["key"]
        fold = node.get("case") == "insensitive"
        return ref_value(key, node.get("op", "eq"), node["value"], fold, r)
    ((key, value),) = node.items()
    return ref_value(key, "eq", value, False, r)


# --- random policies and inventories -----------------------------------------------------

scalars = st.sampled_from([*TEXTS, *NUMBERS, True, False])
orderables = st.sampled_from([*TEXTS, *NUMBERS])


@st.composite
def value_filters(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(["eq", "equal", "ne", "not-equal", "in", "not-in", "ni", "regex",
                               "regex-case", "gt", "ge", "lt", "le", "greater-than", "lte",
                               "absent", "present"]))  # fmt: skip
    key = draw(st.sampled_from(KEYS))
    node: dict[str, Any] = {"type": "value", "key": key}
    if op in ("absent", "present"):
        node |= {"value": op, "op": draw(st.sampled_from(["eq", "ne"]))}
    elif op in ("in", "not-in", "ni"):
        node |= {"op": op, "value": draw(st.lists(scalars, min_size=1, max_size=3))}
    elif op.startswith("regex"):
        node |= {"op": op, "value": draw(st.sampled_from(PATTERNS))}
    elif op in ("eq", "equal", "ne", "not-equal"):
        node |= {"op": op, "value": draw(scalars)}
    else:
        node |= {"op": op, "value": draw(orderables)}
    if draw(st.booleans()) and draw(st.booleans()):
        node["case"] = "insensitive"
    shape = draw(st.sampled_from(["value", "tag", "shorthand"]))
    if shape == "tag" and key.startswith("tag:"):
        node |= {"type": "tag", "key": key[4:]}
    elif shape == "shorthand" and node["op"] in ("eq", "equal") and "case" not in node:
        return {key: node["value"]}
    return node


@st.composite
def metric_filters(draw: st.DrawFn) -> dict[str, Any]:
    name, statistic, days = draw(st.sampled_from(sorted(SPECS)))
    node = {"type": "metrics", "name": name, "statistic": statistic, "days": days,
            "op": draw(st.sampled_from(["lt", "le", "gt", "ge"])),
            "value": draw(st.sampled_from([0, 5, 20, 50.5, 100]))}  # fmt: skip
    if draw(st.booleans()):
        node["missing-value"] = draw(st.sampled_from([0, 10, 99]))
    return node


filter_trees = st.recursive(
    st.one_of(value_filters(), metric_filters()),
    lambda children: st.one_of(
        st.builds(lambda cs: {"and": cs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda cs: {"or": cs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda cs: {"not": cs}, st.lists(children, min_size=1, max_size=2)),
    ),
    max_leaves=8,
)


@st.composite
def resources(draw: st.DrawFn, rid: str) -> Resource:
    tags = draw(st.dictionaries(st.sampled_from(["env", "team", "finops:opt-out"]),
                                st.sampled_from(["prod", "dev", "Dev", "", "5", "2.5", "True"]),
                                max_size=3))  # fmt: skip
    attributes: dict[str, Any] = {
        "InstanceType": draw(st.sampled_from(["t2.micro", "m5.large", "T2.MICRO", "m4.xlarge"])),
        "State": {"Name": draw(st.sampled_from(["running", "stopped"]))},
    }
    for key, values in (("Cores", [0, 5, "5", "x", True]), ("Ratio", [0.5, 2.5, 5.0, None])):
        if draw(st.booleans()):
            attributes[key] = draw(st.sampled_from(values))
    return Resource(ResourceKind.EC2_INSTANCE, rid, "111111111111",
                    draw(st.sampled_from(["us-east-1", "eu-west-1"])),
                    attributes["State"]["Name"], tags, attributes)  # fmt: skip


@st.composite
def inventories(draw: st.DrawFn) -> tuple[list[Resource], dict[Any, float | None]]:
    count = draw(st.integers(min_value=1, max_value=6))
    fleet = [draw(resources(f"i-{i}")) for i in range(count)]
    values = st.one_of(st.none(), st.floats(min_value=0, max_value=120, allow_nan=False))
    metrics = {(r.resource_id, spec): draw(values) for r in fleet for spec in SPECS.values()}
    return fleet, metrics


def pack_text(trees: list[Any]) -> str:
    policies = [{"name": f"p{i}", "resource": "ec2", "filters": [tree]}
                for i, tree in enumerate(trees)]  # fmt: skip
    return yaml.safe_dump({"policies": policies}, sort_keys=False)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=filter_trees, inventory=inventories())
def test_engine_equals_reference(tree: Any, inventory: Any) -> None:
    fleet, metrics = inventory
    (policy,) = load_text(pack_text([tree]))
    context = ctx(metrics)
    for r in fleet:
        assert policy.filters.evaluate(r, context) is Truth.of(ref_eval(tree, r, metrics)), r


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees=st.lists(filter_trees, min_size=1, max_size=3), inventory=inventories())
def test_evaluate_selects_what_the_reference_selects(trees: list[Any], inventory: Any) -> None:
    fleet, metrics = inventory
    pack = load_text(pack_text(trees))
    got = [(m.policy.name, m.resource.resource_id) for m in evaluate(pack, fleet, ctx(metrics))]
    want = [(f"p{i}", r.resource_id) for i, tree in enumerate(trees) for r in fleet
            if ref_eval(tree, r, metrics)]  # fmt: skip
    assert got == want


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=filter_trees, inventory=inventories(), data=st.data())
def test_missing_metrics_only_ever_make_a_result_unknown(
    tree: Any, inventory: Any, data: st.DataObject
) -> None:
    """Kleene soundness: with part of the metrics, a TRUE or FALSE is already final, and the
    specs that metric_requests would name are enough to settle an UNKNOWN."""
    fleet, metrics = inventory
    (policy,) = load_text(pack_text([tree]))
    keep = data.draw(st.sets(st.sampled_from(sorted(metrics, key=repr))))
    partial = {k: v for k, v in metrics.items() if k in keep}
    for r in fleet:
        full = policy.filters.evaluate(r, ctx(metrics))
        truth, needed = policy.filters.pending(r, ctx(partial))
        assert truth is policy.filters.evaluate(r, ctx(partial))
        assert truth in (full, Truth.UNKNOWN)
        if truth is Truth.UNKNOWN:
            assert needed
            completed = partial | {(r.resource_id, s): metrics[(r.resource_id, s)] for s in needed}
            # fetching what was asked for settles it or narrows what is still missing
            again, still = policy.filters.pending(r, ctx(completed))
            assert again is full or (still and not still & needed)
        else:
            assert not needed
    assert NOW.tzinfo is not None
