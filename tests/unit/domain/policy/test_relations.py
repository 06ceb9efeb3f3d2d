"""Relation filters and the indexes the context builds for them."""

from __future__ import annotations

from typing import Any

import pytest

from backend.domain.policy import EvaluationContext, Truth

from .helpers import ACCOUNT, NOW, REGION, ctx, res, truth

T, F, U = Truth.TRUE, Truth.FALSE, Truth.UNKNOWN
ARN = "arn:aws:elasticloadbalancing:us-east-1:1:loadbalancer/app/web/abc"


@pytest.mark.parametrize(
    ("state", "attachments", "expected"),
    [
        ("available", [], T),
        ("available", None, T),
        ("in-use", [{"InstanceId": "i-1"}], F),
        ("in-use", [], F),
        ("available", [{"InstanceId": "i-1"}], F),  # contradictory: fail safe
    ],
)
def test_unattached(state: str, attachments: Any, expected: Truth) -> None:
    volume = res("ebs", "vol-1", state, attributes={"Attachments": attachments})
    assert truth(["unattached"], volume) is expected
    assert truth([{"type": "unattached"}], volume) is expected


def snapshot(rid: str, volume: str | None, **kw: Any) -> Any:
    attributes = {"VolumeId": volume} if volume else {}
    return res("ebs-snapshot", rid, "completed", attributes=attributes, **kw)


def test_orphaned_and_backs_ami_from_an_inventory() -> None:
    inventory = [
        res("ebs", "vol-live", "in-use"),
        res("ebs", "vol-gone", "deleted"),
        res(
            "ami",
            "ami-1",
            "available",
            attributes={
                "BlockDeviceMappings": [
                    {"Ebs": {"SnapshotId": "snap-ami"}},
                    {"DeviceName": "/dev/sdb", "NoDevice": ""},
                ]
            },
        ),
        snapshot("snap-live", "vol-live"),
        snapshot("snap-orphan", "vol-gone"),
        snapshot("snap-ami", "vol-deleted-long-ago"),
        snapshot("snap-nosource", None),
        snapshot("snap-other-region", "vol-live", region="eu-west-1"),
    ]
    context = EvaluationContext.from_resources(inventory, now=NOW)
    assert context.existing_volume_ids == {
        (ACCOUNT, REGION): {"vol-live"},
        (ACCOUNT, "eu-west-1"): set(),
    }
    assert context.ami_snapshot_ids[(ACCOUNT, REGION)] == {"snap-ami"}
    by_id = {r.resource_id: r for r in inventory}
    expected = {
        "snap-live": (F, F),
        "snap-orphan": (T, F),
        "snap-ami": (T, T),
        "snap-nosource": (F, F),
        "snap-other-region": (T, F),  # eu-west-1 was inventoried and has no such volume
    }
    for rid, (orphaned, backs) in expected.items():
        assert truth(["orphaned"], by_id[rid], context) is orphaned, rid
        assert truth(["backs-ami"], by_id[rid], context) is backs, rid
    rule = ["orphaned", {"not": ["backs-ami"]}]
    assert [rid for rid in expected if truth(rule, by_id[rid], context) is T] == [
        "snap-orphan",
        "snap-other-region",
    ]


def test_relations_without_an_index_are_unknown_even_negated() -> None:
    context = EvaluationContext.from_resources([], now=NOW, inventoried=[])
    snap = snapshot("snap-1", "vol-1")
    assert truth(["orphaned"], snap, context) is U
    assert truth([{"not": ["backs-ami"]}], snap, context) is U


def test_inventoried_names_regions_without_volumes() -> None:
    context = EvaluationContext.from_resources([], now=NOW, inventoried=[(ACCOUNT, "ap-south-1")])
    assert truth(["orphaned"], snapshot("s", "vol-1", region="ap-south-1"), context) is T


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [({}, T), ({"AssociationId": None}, T), ({"AssociationId": "eipassoc-1"}, F)],
)
def test_unassociated(attributes: dict[str, Any], expected: Truth) -> None:
    assert (
        truth(["unassociated"], res("elastic-ip", "eipalloc-1", "x", attributes=attributes))
        is expected
    )


@pytest.mark.parametrize(
    ("healthy", "expected"), [(0, T), (3, F), (None, Truth.UNKNOWN), ("absent", Truth.UNKNOWN)]
)
def test_no_healthy_targets(healthy: Any, expected: Truth) -> None:
    targets = {} if healthy == "absent" else {ARN: healthy}
    evidence: dict[str, Any] = {}
    from .helpers import filters_of

    tree = filters_of(["no-healthy-targets"], "elb")
    lb = res("elb", ARN, "active")
    assert tree.evaluate(lb, ctx(lb_healthy_targets=targets), evidence) is expected
    if healthy in (None, "absent"):
        assert evidence["no-healthy-targets.why"] == "healthy target count not known"
        # and its negation does not select it either
        negated = filters_of([{"not": ["no-healthy-targets"]}], "elb")
        assert negated.evaluate(lb, ctx(lb_healthy_targets=targets), {}) is Truth.UNKNOWN
