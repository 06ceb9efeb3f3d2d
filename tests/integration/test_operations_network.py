"""Operations and their inverses against a moto_server: addresses, load balancers, RDS, tags."""

from __future__ import annotations

import json
from typing import Any

import pytest

from backend.domain.resources import ResourceKind
from backend.providers.aws.operations import CannotUndo, operation_for
from tests.integration.aws_fleet import client, seed_region
from tests.integration.test_operations import REGION, Calls, launch, make_ctx, tags_of

pytestmark = pytest.mark.moto_server
K = ResourceKind


@pytest.fixture
def ec2(moto_url: str) -> Any:
    return client(moto_url, "ec2", REGION)


@pytest.fixture
def elbv2(moto_url: str) -> Any:
    return client(moto_url, "elbv2", REGION)


# --- Elastic IPs ---


def test_release_address_and_get_the_same_ip_back(moto_url: str, ec2: Any) -> None:
    got = ec2.allocate_address(
        Domain="vpc",
        TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": [{"Key": "team", "Value": "a"}]}],
    )
    alloc, ip = got["AllocationId"], got["PublicIp"]
    calls = Calls()
    ctx = make_ctx(moto_url, calls=calls)
    op = operation_for("release", K.ELASTIC_IP)
    before = op.describe(ctx, alloc)
    assert before.state == "unassociated"
    op.execute(ctx, before, {})
    op.execute(ctx, before, {})
    assert calls.made == ["ec2:release_address"]
    assert op.verify(ctx, alloc, {}) is None
    assert ip not in {a["PublicIp"] for a in ec2.describe_addresses()["Addresses"]}

    result = op.undo(ctx, before, None, {})
    assert result.startswith(f"allocated {ip} again as eipalloc-")
    back = ec2.describe_addresses(PublicIps=[ip])["Addresses"][0]
    assert back["AllocationId"] != alloc and back["AllocationId"] in result
    assert tags_of(back) == {"team": "a"}
    assert (
        op.undo(ctx, before, None, {})
        == f"{ip} is allocated in this account as {back['AllocationId']}"
    )
    assert len(ec2.describe_addresses()["Addresses"]) == 1


# --- load balancers ---


def _alb(ec2: Any, elbv2: Any, name: str = "web") -> dict[str, Any]:
    """An internal ALB: a target group with two instances, a listener and a path rule."""
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if s["VpcId"] == vpc][:2]
    lb = elbv2.create_load_balancer(
        Name=name,
        Subnets=subnets,
        Scheme="internal",
        Type="application",
        Tags=[{"Key": "env", "Value": "dev"}, {"Key": "owner", "Value": "web-team"}],
    )["LoadBalancers"][0]
    groups = {}
    for tg_name, port in (("web-main", 80), ("web-api", 8080)):
        groups[tg_name] = elbv2.create_target_group(
            Name=tg_name,
            Protocol="HTTP",
            Port=port,
            VpcId=vpc,
            TargetType="instance",
            HealthCheckPath="/health",
            Tags=[{"Key": "app", "Value": tg_name}],
        )["TargetGroups"][0]["TargetGroupArn"]
    instances = [launch(ec2), launch(ec2)]
    elbv2.register_targets(
        TargetGroupArn=groups["web-main"], Targets=[{"Id": i, "Port": 80} for i in instances]
    )
    listener = elbv2.create_listener(
        LoadBalancerArn=lb["LoadBalancerArn"],
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": groups["web-main"]}],
    )["Listeners"][0]
    elbv2.create_rule(
        ListenerArn=listener["ListenerArn"],
        Priority=5,
        Conditions=[{"Field": "path-pattern", "Values": ["/api/*"]}],
        Actions=[{"Type": "forward", "TargetGroupArn": groups["web-api"]}],
    )
    return {"lb": lb, "subnets": subnets, "groups": groups, "instances": instances}


def _by_name(elbv2: Any, name: str) -> list[dict[str, Any]]:
    return [
        lb
        for lb in elbv2.describe_load_balancers()["LoadBalancers"]
        if lb["LoadBalancerName"] == name
    ]


def _listeners(elbv2: Any, arn: str) -> list[dict[str, Any]]:
    return list(elbv2.describe_listeners(LoadBalancerArn=arn)["Listeners"])


def test_delete_load_balancer_and_recreate_it_from_the_configuration(
    moto_url: str, ec2: Any, elbv2: Any
) -> None:
    made = _alb(ec2, elbv2)
    old_arn = made["lb"]["LoadBalancerArn"]
    calls = Calls()
    ctx = make_ctx(moto_url, key="act-lb", calls=calls)
    op = operation_for("delete", K.LOAD_BALANCER)
    before = op.describe(ctx, old_arn)
    backup = op.backup(ctx, before)
    assert backup is not None and backup.startswith("config:")
    config = json.loads(backup.removeprefix("config:"))
    assert {g["TargetGroupName"] for g in config["target_groups"]} == {"web-main", "web-api"}
    assert [len(lst["Rules"]) for lst in config["listeners"]] == [1]
    assert calls.made == []  # capturing the configuration changes nothing

    op.execute(ctx, before, {})
    op.execute(ctx, before, {})
    assert calls.made == ["elbv2:delete_load_balancer"]
    assert op.verify(ctx, old_arn, {}) is None
    assert _by_name(elbv2, "web") == []

    result = op.undo(ctx, before, backup, {})
    [lb] = _by_name(elbv2, "web")
    new_arn = lb["LoadBalancerArn"]
    assert new_arn != old_arn and new_arn in result and "NEW ARN" in result
    assert (lb["Scheme"], lb["Type"]) == ("internal", "application")
    assert {z["SubnetId"] for z in lb["AvailabilityZones"]} == set(made["subnets"])
    tags = tags_of(elbv2.describe_tags(ResourceArns=[new_arn])["TagDescriptions"][0])
    assert {k: tags[k] for k in ("env", "owner")} == {"env": "dev", "owner": "web-team"}
    [listener] = _listeners(elbv2, new_arn)
    assert listener["Port"] == 80
    assert listener["DefaultActions"][0]["TargetGroupArn"] == made["groups"]["web-main"]
    rules = elbv2.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"]
    [rule] = [r for r in rules if not r["IsDefault"]]
    assert rule["Priority"] == "5"
    assert rule["Actions"][0]["TargetGroupArn"] == made["groups"]["web-api"]
    health = elbv2.describe_target_health(TargetGroupArn=made["groups"]["web-main"])
    assert {d["Target"]["Id"] for d in health["TargetHealthDescriptions"]} == set(made["instances"])
    assert "reused target group web-main" in result

    again = op.undo(ctx, before, backup, {})  # a retried undo: nothing made twice
    assert again.startswith("found the recreated")
    assert len(_by_name(elbv2, "web")) == 1
    assert len(_listeners(elbv2, new_arn)) == 1
    rules = elbv2.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"]
    assert len([r for r in rules if not r["IsDefault"]]) == 1


def test_recreate_makes_target_groups_that_are_gone_and_skips_gone_targets(
    moto_url: str, ec2: Any, elbv2: Any
) -> None:
    made = _alb(ec2, elbv2)
    ctx = make_ctx(moto_url, key="act-lb2")
    op = operation_for("delete", K.LOAD_BALANCER)
    before = op.describe(ctx, made["lb"]["LoadBalancerArn"])
    backup = op.backup(ctx, before)
    op.execute(ctx, before, {})
    for arn in made["groups"].values():
        elbv2.delete_target_group(TargetGroupArn=arn)
    result = op.undo(ctx, before, backup, {})
    assert "created target group web-main" in result and "created target group web-api" in result
    groups = {g["TargetGroupName"]: g for g in elbv2.describe_target_groups()["TargetGroups"]}
    main = groups["web-main"]
    assert (main["Port"], main["Protocol"], main["HealthCheckPath"]) == (80, "HTTP", "/health")
    assert main["TargetGroupArn"] != made["groups"]["web-main"]
    tg_tags = elbv2.describe_tags(ResourceArns=[main["TargetGroupArn"]])["TagDescriptions"][0]
    assert tags_of(tg_tags) == {"app": "web-main"}
    health = elbv2.describe_target_health(TargetGroupArn=main["TargetGroupArn"])
    assert {d["Target"]["Id"] for d in health["TargetHealthDescriptions"]} == set(made["instances"])
    [lb] = _by_name(elbv2, "web")
    [listener] = _listeners(elbv2, lb["LoadBalancerArn"])
    assert listener["DefaultActions"][0]["TargetGroupArn"] == main["TargetGroupArn"]


def test_recreate_leaves_a_stranger_of_the_same_name_alone(
    moto_url: str, ec2: Any, elbv2: Any
) -> None:
    made = _alb(ec2, elbv2)
    ctx = make_ctx(moto_url, key="act-lb3")
    op = operation_for("delete", K.LOAD_BALANCER)
    before = op.describe(ctx, made["lb"]["LoadBalancerArn"])
    backup = op.backup(ctx, before)
    op.execute(ctx, before, {})
    elbv2.create_load_balancer(Name="web", Subnets=made["subnets"], Type="application")
    with pytest.raises(CannotUndo, match="not made by this undo"):
        op.undo(ctx, before, backup, {})
    with pytest.raises(CannotUndo, match="no configuration"):
        op.undo(ctx, before, None, {})


def test_a_network_load_balancer_comes_back_with_its_ip_targets(
    moto_url: str, ec2: Any, elbv2: Any
) -> None:
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if s["VpcId"] == vpc][:2]
    nlb = elbv2.create_load_balancer(Name="tcp", Subnets=subnets, Type="network")
    arn = nlb["LoadBalancers"][0]["LoadBalancerArn"]
    tg = elbv2.create_target_group(
        Name="tcp-tg", Protocol="TCP", Port=443, VpcId=vpc, TargetType="ip"
    )["TargetGroups"][0]["TargetGroupArn"]
    elbv2.register_targets(TargetGroupArn=tg, Targets=[{"Id": "10.0.0.5", "Port": 443}])
    elbv2.create_listener(
        LoadBalancerArn=arn,
        Protocol="TCP",
        Port=443,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}],
    )
    ctx = make_ctx(moto_url, key="act-nlb")
    op = operation_for("delete", K.LOAD_BALANCER)
    before = op.describe(ctx, arn)
    backup = op.backup(ctx, before)
    op.execute(ctx, before, {})
    elbv2.delete_target_group(TargetGroupArn=tg)
    assert "created target group tcp-tg" in op.undo(ctx, before, backup, {})
    [lb] = _by_name(elbv2, "tcp")
    assert (lb["Type"], lb["Scheme"]) == ("network", "internet-facing")
    [listener] = _listeners(elbv2, lb["LoadBalancerArn"])
    assert (listener["Protocol"], listener["Port"]) == ("TCP", 443)
    new_tg = listener["DefaultActions"][0]["TargetGroupArn"]
    health = elbv2.describe_target_health(TargetGroupArn=new_tg)["TargetHealthDescriptions"]
    assert [d["Target"]["Id"] for d in health] == ["10.0.0.5"]


# --- RDS ---


def test_stop_and_start_a_database(moto_url: str) -> None:
    rds = client(moto_url, "rds", REGION)
    rds.create_db_instance(
        DBInstanceIdentifier="reports",
        DBInstanceClass="db.t3.medium",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername="admin",
        MasterUserPassword="password123",
    )
    calls = Calls()
    ctx = make_ctx(moto_url, calls=calls)
    stop = operation_for("stop", K.RDS_INSTANCE)
    before = stop.describe(ctx, "reports")
    stop.execute(ctx, before, {})
    stop.execute(ctx, before, {})
    assert calls.made == ["rds:stop_db_instance"]
    after = stop.verify(ctx, "reports", {})
    assert after is not None and after.state == "stopped"
    assert stop.undo(ctx, before, None, {}) == "started database reports"
    status = rds.describe_db_instances(DBInstanceIdentifier="reports")["DBInstances"][0]
    assert status["DBInstanceStatus"] == "available"
    start = operation_for("start", K.RDS_INSTANCE)
    rds.stop_db_instance(DBInstanceIdentifier="reports")
    stopped = start.describe(ctx, "reports")
    start.execute(ctx, stopped, {})
    assert start.verify(ctx, "reports", {}) is not None
    assert start.undo(ctx, stopped, None, {}) == "stopped database reports"
    status = rds.describe_db_instances(DBInstanceIdentifier="reports")["DBInstances"][0]
    assert status["DBInstanceStatus"] == "stopped"


# --- tags ---


def test_mark_and_untag_every_kind_and_undo_to_the_pre_state(moto_url: str) -> None:
    fleet = seed_region(moto_url, REGION, instances=1)
    calls = Calls()
    ctx = make_ctx(moto_url, calls=calls)
    for kind_name, ids in fleet.ids.items():
        kind = K(kind_name)
        mark, untag = operation_for("tag", kind), operation_for("untag", kind)
        rid = ids[0]
        before = mark.describe(ctx, rid)
        params = {"key": "finops-review", "value": "2030-01-01"}
        calls.made.clear()
        mark.execute(ctx, before, params)
        mark.execute(ctx, before, params)
        assert len(calls.made) == 1, kind
        marked = mark.verify(ctx, rid, params)
        assert marked is not None and marked.tags["finops-review"] == "2030-01-01", kind
        assert mark.undo(ctx, before, None, params) == f"removed tag finops-review from {rid}"
        assert "finops-review" not in mark.describe(ctx, rid).tags, kind

        # an existing tag: mark overwrites it, its undo puts the old value back
        mark.execute(ctx, before, params)
        marked = mark.describe(ctx, rid)
        mark.execute(ctx, marked, {"key": "finops-review", "value": "later"})
        mark.undo(ctx, marked, None, {"key": "finops-review", "value": "later"})
        assert mark.describe(ctx, rid).tags["finops-review"] == "2030-01-01", kind

        untag.execute(ctx, marked, {"key": "finops-review"})
        assert untag.verify(ctx, rid, {"key": "finops-review"}) is not None
        assert "finops-review" not in untag.describe(ctx, rid).tags, kind
        result = untag.undo(ctx, marked, None, {"key": "finops-review"})
        assert result == f"put back tag finops-review=2030-01-01 on {rid}"
        assert untag.describe(ctx, rid).tags["finops-review"] == "2030-01-01", kind
