"""The value filter: fields, tags, record fields, operators, absent/present, shorthand."""

from __future__ import annotations

from typing import Any

import pytest

from backend.domain.policy import Truth, ValueFilter
from backend.domain.policy.values import lookup

from .helpers import ACCOUNT, REGION, ctx, filters_of, res, truth

T, F = Truth.TRUE, Truth.FALSE

INSTANCE = res(
    tags={"env": "dev", "size": "42", "Flag": "True", "empty": ""},
    attributes={
        "InstanceType": "t2.micro",
        "State": {"Name": "running", "Code": 16},
        "Placement": {"AvailabilityZone": "us-east-1a"},
        "CpuOptions": {"CoreCount": 2, "ThreadsPerCore": 1.5},
        "EbsOptimized": False,
        "BlockDeviceMappings": [{"Ebs": {"VolumeId": "vol-1"}}, {"Ebs": {"VolumeId": "vol-2"}}],
        "Nothing": None,
        "OwnerId": ACCOUNT,
    },
)


def value(key: str, op: str | None, val: Any, **extra: Any) -> list[dict[str, Any]]:
    spec: dict[str, Any] = {"type": "value", "key": key, "value": val, **extra}
    if op is not None:
        spec["op"] = op
    return [spec]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("State.Name", "running"),
        ("Placement.AvailabilityZone", "us-east-1a"),
        ("BlockDeviceMappings.1.Ebs.VolumeId", "vol-2"),
        ("BlockDeviceMappings[0].Ebs.VolumeId", "vol-1"),
        ("BlockDeviceMappings[5].Ebs.VolumeId", None),
        ("State.Name.Deeper", None),
        ("Missing", None),
        ("Nothing", None),
        ("tag:env", "dev"),
        ("tag:missing", None),
        ("state", "running"),
        ("region", REGION),
        ("account", ACCOUNT),
        ("id", "i-1"),
        ("kind", "ec2"),
    ],
)
def test_lookup(key: str, expected: Any) -> None:
    assert lookup(INSTANCE, key) == expected


@pytest.mark.parametrize(
    ("key", "op", "val", "expected"),
    [
        ("State.Name", "eq", "running", T),
        ("State.Name", "equal", "running", T),
        ("State.Name", None, "running", T),
        ("State.Name", "eq", "Running", F),  # case-sensitive by default
        ("State.Name", "ne", "stopped", T),
        ("State.Name", "not-equal", "running", F),
        ("State.Code", "eq", 16, T),
        ("State.Code", "eq", 16.0, T),
        ("State.Code", "eq", "16", T),  # numeric text against a number compares numerically
        ("tag:size", "eq", 42, T),  # tags are text; the number 42 still matches "42"
        ("tag:size", "gt", 9, T),  # numerically, not "42" < "9"
        ("tag:size", "lt", 100, T),
        ("tag:env", "gt", 5, F),  # text against a number: no order, no match
        ("State.Code", "gt", 15, T),
        ("State.Code", "greater-than", 16, F),
        ("State.Code", "ge", 16, T),
        ("State.Code", "gte", 17, F),
        ("State.Code", "lt", 17, T),
        ("State.Code", "less-than", 16, F),
        ("State.Code", "le", 16, T),
        ("State.Code", "lte", 15, F),
        ("CpuOptions.ThreadsPerCore", "gt", 1, T),
        ("InstanceType", "gt", "t1", T),  # text against text: lexicographic
        ("InstanceType", "lt", "t1", F),
        ("State.Name", "in", ["running", "pending"], T),
        ("State.Name", "in", ["stopped"], F),
        ("State.Name", "not-in", ["stopped"], T),
        ("State.Name", "ni", ["running"], F),
        ("State.Code", "in", [15, 16], T),
        ("EbsOptimized", "eq", False, T),
        ("EbsOptimized", "eq", 0, F),  # a boolean is not a number
        ("tag:Flag", "eq", True, T),  # 'True' text against a boolean
        ("tag:Flag", "eq", False, F),
        ("tag:empty", "eq", "", T),
    ],
)
def test_operators(key: str, op: str | None, val: Any, expected: Truth) -> None:
    assert truth(value(key, op, val), INSTANCE) is expected


@pytest.mark.parametrize(
    ("op", "val", "expected"),
    [
        ("eq", "x", F),
        ("ne", "prod", T),  # absent is not equal to prod
        ("in", ["a"], F),
        ("not-in", ["prod"], T),
        ("regex", ".*", F),
        ("gt", 0, F),
        ("ge", 0, F),
        ("lt", 10, F),
        ("le", 10, F),
    ],
)
def test_absent_field(op: str, val: Any, expected: Truth) -> None:
    assert truth(value("tag:nope", op, val), INSTANCE) is expected
    assert truth(value("Some.Missing.Path", op, val), INSTANCE) is expected
    assert truth(value("Nothing", op, val), INSTANCE) is expected  # null is absent


@pytest.mark.parametrize(
    ("pattern", "op", "expected"),
    [
        ("^(t2|m4|c4|r4)\\..*", "regex", T),
        ("t2", "regex", T),  # re.match: anchored at the start only
        ("micro", "regex", F),  # not a search
        ("T2\\.MICRO", "regex", T),  # like Custodian, `regex` ignores case
        ("T2\\.MICRO", "regex-case", F),
        ("t2\\.micro$", "regex-case", T),
    ],
)
def test_regex(pattern: str, op: str, expected: Truth) -> None:
    assert truth(value("InstanceType", op, pattern), INSTANCE) is expected


def test_regex_on_a_number_is_false() -> None:
    assert truth(value("State.Code", "regex", "1.*"), INSTANCE) is F


def test_case_insensitive_and_normalize() -> None:
    r = res(tags={"env": "  Prod "})
    assert truth(value("tag:env", "eq", "prod"), r) is F
    assert truth(value("tag:env", "eq", "  PROD ", case="insensitive"), r) is T
    assert truth(value("tag:env", "eq", "prod", value_type="normalize"), r) is T
    assert truth(value("tag:env", "in", ["PROD", "x"], value_type="normalize"), r) is T
    assert truth(value("tag:env", "ne", "PROD", value_type="normalize"), r) is F


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([{"tag:finops:opt-out": "absent"}], T),
        ([{"tag:env": "absent"}], F),
        ([{"tag:env": "present"}], T),
        ([{"tag:finops:opt-out": "present"}], F),
        ([{"tag:empty": "present"}], T),  # an empty tag value is still a tag
        ([{"Nothing": "absent"}], T),
        ([{"type": "value", "key": "tag:env", "op": "ne", "value": "absent"}], T),
        ([{"type": "value", "key": "tag:env", "op": "ne", "value": "present"}], F),
        ([{"type": "tag", "key": "env", "value": "dev"}], T),
        ([{"type": "tag", "key": "env", "op": "ne", "value": "dev"}], F),
        ([{"type": "tag", "key": "finops:opt-out", "value": "absent"}], T),
        ([{"State.Name": "running"}], T),
        ([{"State.Name": "stopped"}], F),
        ([{"state": "running"}, {"region": REGION}, {"kind": "ec2"}, {"id": "i-1"}], T),
        ([{"OwnerId": "{account_id}"}], T),
        ([{"Placement.AvailabilityZone": "{region}a"}], T),
    ],
)
def test_shorthand_and_words(filters: list[Any], expected: Truth) -> None:
    assert truth(filters, INSTANCE) is expected


def test_account_template_uses_the_resource_account() -> None:
    other = res(attributes={"OwnerId": ACCOUNT}, account="222222222222")
    assert truth([{"OwnerId": "{account_id}"}], other) is F


def test_tag_key_with_colons_is_one_key() -> None:
    r = res(tags={"finops:opt-out": "true"})
    assert truth([{"tag:finops:opt-out": "absent"}], r) is F
    assert truth([{"tag:finops:opt-out": True}], r) is T


def test_parsed_tree_is_introspectable() -> None:
    tree = filters_of([{"type": "value", "key": "tag:env", "op": "not-equal", "value": "prod"}])
    (only,) = tree.children()
    assert only == ValueFilter("tag:env", "ne", "prod")
    tree = filters_of([{"type": "value", "key": "x", "op": "ni", "value": [1, "a"]}])
    assert tree.children()[0] == ValueFilter("x", "not-in", (1, "a"))


def test_evidence_records_the_values_looked_at() -> None:
    tree = filters_of([{"tag:env": "dev"}, {"tag:finops:opt-out": "absent"}, {"State.Code": 16}])
    evidence: dict[str, Any] = {}
    assert tree.evaluate(INSTANCE, ctx(), evidence) is T
    assert evidence == {"tag:env": "dev", "tag:finops:opt-out": None, "State.Code": 16}
