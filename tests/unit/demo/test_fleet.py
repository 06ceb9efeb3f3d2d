"""The demo fleet's answer must be what the account holds, recomputed here from describes."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from moto import mock_aws

from backend.demo.fleet import (
    OPT_OUT_TAG,
    PREVIOUS_GENERATION,
    TRAPS,
    WASTE,
    ClientFactory,
    DemoFleet,
    seed_demo_fleet,
)

REGIONS = ("us-east-1", "eu-west-1")
SMALL = 16  # instances per region


def _client(service: str, region: str) -> Any:
    return boto3.client(
        service, region_name=region, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def _fake_credentials(mp: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        mp.delenv(name, raising=False)
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_credentials(monkeypatch)


def _seed(regions: tuple[str, ...] = REGIONS, **kw: Any) -> DemoFleet:
    with mock_aws():
        return seed_demo_fleet(_client, regions, **kw)


@dataclass
class Observed:
    """What describes and CloudWatch say, gathered while the mock is open."""

    waste: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    ids: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    opted_out: set[str] = field(default_factory=set)  # opt-out and would match a rule without it
    prod_idle: set[str] = field(default_factory=set)
    in_use: set[str] = field(default_factory=set)
    sole_root_of_stopped: set[str] = field(default_factory=set)
    ami_snapshots: set[str] = field(default_factory=set)
    volume_gone: set[str] = field(default_factory=set)  # owned snapshots whose volume is gone
    asg_members: set[str] = field(default_factory=set)
    protected: set[str] = field(default_factory=set)
    idle_ec2: set[str] = field(default_factory=set)


def _stat(
    cw: Any, ns: str, metric: str, dim: tuple[str, str], days: int, stat: str
) -> float | None:
    now = dt.datetime.now(dt.UTC)
    points = cw.get_metric_statistics(
        Namespace=ns,
        MetricName=metric,
        Dimensions=[{"Name": dim[0], "Value": dim[1]}],
        StartTime=now - dt.timedelta(days=days),
        EndTime=now,
        Period=days * 86400,
        Statistics=[stat],
    )["Datapoints"]
    return points[0][stat] if points else None


def _tags(item: dict[str, Any], key: str = "Tags") -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get(key, [])}


def _observe_region(client: ClientFactory, region: str, seen: Observed) -> None:
    ec2, cw = client("ec2", region), client("cloudwatch", region)
    account = client("sts", region).get_caller_identity()["Account"]

    instances = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    volumes = ec2.describe_volumes()["Volumes"]
    stopped = {i["InstanceId"] for i in instances if i["State"]["Name"] == "stopped"}
    for inst in instances:
        iid, tags = inst["InstanceId"], _tags(inst)
        seen.ids["ec2"].add(iid)
        cpu = _stat(cw, "AWS/EC2", "CPUUtilization", ("InstanceId", iid), 14, "Average")
        assert cpu is not None, iid
        idle = inst["State"]["Name"] == "running" and cpu < 5
        if idle:
            seen.idle_ec2.add(iid)
        rules = {
            "idle-nonprod-ec2": idle and tags.get("env") != "prod",
            "previous-generation-ec2": inst["InstanceType"].split(".")[0] in PREVIOUS_GENERATION,
        }
        _file(seen, iid, tags, rules)
        if idle and tags.get("env") == "prod":
            seen.prod_idle.add(iid)
        for attr, key in (
            ("disableApiTermination", "DisableApiTermination"),
            ("disableApiStop", "DisableApiStop"),
        ):
            if ec2.describe_instance_attribute(InstanceId=iid, Attribute=attr)[key]["Value"]:
                seen.protected.add(iid)

    per_instance: defaultdict[str, list[str]] = defaultdict(list)
    for vol in volumes:
        vid, tags = vol["VolumeId"], _tags(vol)
        seen.ids["ebs"].add(vid)
        rules = {
            "unattached-ebs": vol["State"] == "available",
            "gp2-volumes": vol["VolumeType"] == "gp2",
        }
        _file(seen, vid, tags, rules)
        if vol["State"] == "in-use":
            seen.in_use.add(vid)
        for att in vol.get("Attachments", []):
            per_instance[att["InstanceId"]].append(vid)
    seen.sole_root_of_stopped |= {
        vols[0] for iid, vols in per_instance.items() if iid in stopped and len(vols) == 1
    }

    # moto ignores OwnerIds=["self"], so filter on the owner as AWS would
    owned = [{"Name": "owner-id", "Values": [account]}]
    snapshots = ec2.describe_snapshots(Filters=owned)["Snapshots"]
    images = ec2.describe_images(Owners=["self"])["Images"]
    backing = {
        m["Ebs"]["SnapshotId"]
        for i in images
        for m in i.get("BlockDeviceMappings", [])
        if "Ebs" in m
    }
    live = {v["VolumeId"] for v in volumes}
    seen.ami_snapshots |= backing
    seen.ids["ami"] |= {i["ImageId"] for i in images}
    for snap in snapshots:
        seen.ids["ebs-snapshot"].add(snap["SnapshotId"])
        if snap["VolumeId"] not in live:
            seen.volume_gone.add(snap["SnapshotId"])
            if snap["SnapshotId"] not in backing:
                seen.waste["orphan-snapshots"].add(snap["SnapshotId"])

    for addr in ec2.describe_addresses()["Addresses"]:
        seen.ids["elastic-ip"].add(addr["AllocationId"])
        if not addr.get("AssociationId"):
            seen.waste["unassociated-eip"].add(addr["AllocationId"])

    for lb in client("elbv2", region).describe_load_balancers()["LoadBalancers"]:
        arn = lb["LoadBalancerArn"]
        seen.ids["elb"].add(arn)
        dim = ("LoadBalancer", arn.split(":loadbalancer/")[1])
        requests = _stat(cw, "AWS/ApplicationELB", "RequestCount", dim, 7, "Sum") or 0.0
        if lb["Type"] == "application" and requests < 100:
            seen.waste["idle-alb"].add(arn)

    for db in client("rds", region).describe_db_instances()["DBInstances"]:
        name, tags = db["DBInstanceIdentifier"], _tags(db, "TagList")
        seen.ids["rds"].add(name)
        dim = ("DBInstanceIdentifier", name)
        conns = _stat(cw, "AWS/RDS", "DatabaseConnections", dim, 7, "Maximum")
        assert conns is not None, name
        if conns < 1:
            (seen.prod_idle if tags.get("env") == "prod" else seen.waste["idle-rds"]).add(name)

    groups = client("autoscaling", region).describe_auto_scaling_instances()
    seen.asg_members |= {i["InstanceId"] for i in groups["AutoScalingInstances"]}


def _file(seen: Observed, rid: str, tags: dict[str, str], rules: dict[str, bool]) -> None:
    for rule, matches in rules.items():
        if matches and OPT_OUT_TAG in tags:
            seen.opted_out.add(rid)
        elif matches:
            seen.waste[rule].add(rid)


@pytest.fixture(scope="module")
def seeded() -> tuple[DemoFleet, Observed]:
    """One small account, observed and closed before any test looks at it."""
    with pytest.MonkeyPatch.context() as mp:
        _fake_credentials(mp)
        with mock_aws():
            fleet = seed_demo_fleet(_client, REGIONS, instances_per_region=SMALL)
            seen = Observed()
            for region in REGIONS:
                _observe_region(_client, region, seen)
    return fleet, seen


@pytest.mark.parametrize("category", WASTE)
def test_waste_is_exactly_what_the_account_holds(
    seeded: tuple[DemoFleet, Observed], category: str
) -> None:
    fleet, seen = seeded
    assert fleet.waste[category], f"{category} should not be empty"
    assert set(fleet.waste[category]) == seen.waste[category]


def test_counts_match_the_account(seeded: tuple[DemoFleet, Observed]) -> None:
    fleet, seen = seeded
    assert dict(fleet.counts) == {kind: len(ids) for kind, ids in seen.ids.items()}
    assert fleet.regions == REGIONS


def test_every_trap_exists_and_is_what_it_claims(seeded: tuple[DemoFleet, Observed]) -> None:
    fleet, seen = seeded
    everything = set().union(*seen.ids.values())
    for trap in TRAPS:
        assert fleet.traps[trap], f"{trap} should not be empty"
        assert set(fleet.traps[trap]) <= everything, trap
    traps = {k: set(v) for k, v in fleet.traps.items()}
    assert traps["prod-idle"] == seen.prod_idle
    assert any(rid in seen.ids["rds"] for rid in traps["prod-idle"])
    assert traps["opted-out"] == seen.opted_out
    assert traps["attached-volume"] <= seen.in_use
    assert traps["attached-volume"] & seen.sole_root_of_stopped
    assert traps["ami-snapshot"] == seen.ami_snapshots
    assert traps["ami-snapshot"] & seen.volume_gone  # looks orphaned, yet backs an AMI
    assert traps["asg-member"] == seen.asg_members
    assert traps["termination-protected"] == seen.protected
    assert len(traps["termination-protected"]) == 2 * len(REGIONS)


def test_traps_fall_where_the_plain_rules_put_them(seeded: tuple[DemoFleet, Observed]) -> None:
    fleet, _ = seeded
    waste = {k: set(v) for k, v in fleet.waste.items()}
    traps = {k: set(v) for k, v in fleet.traps.items()}
    assert not traps["opted-out"] & set().union(*waste.values())
    assert not traps["prod-idle"] & (waste["idle-nonprod-ec2"] | waste["idle-rds"])
    assert not traps["ami-snapshot"] & waste["orphan-snapshots"]
    assert not traps["attached-volume"] & waste["unattached-ebs"]
    # the plain idle rule selects these; only safety rules will spare them
    assert traps["asg-member"] <= waste["idle-nonprod-ec2"]
    assert traps["termination-protected"] <= waste["idle-nonprod-ec2"]


@pytest.mark.usefixtures("aws_env")
def test_same_seed_same_shape() -> None:
    first, second = (_seed(("eu-west-1",), seed=7, instances_per_region=12) for _ in range(2))
    assert first.counts == second.counts
    for answer in ("waste", "traps"):
        sizes = [{k: len(v) for k, v in getattr(f, answer).items()} for f in (first, second)]
        assert sizes[0] == sizes[1], answer


@pytest.mark.usefixtures("aws_env")
def test_rejects_too_few_instances() -> None:
    with pytest.raises(ValueError, match="instances_per_region"):
        seed_demo_fleet(_client, instances_per_region=3)


@pytest.mark.usefixtures("aws_env")
def test_default_fleet_is_a_few_hundred_resources() -> None:
    fleet = _seed()
    assert 200 <= fleet.total <= 1000
    assert set(fleet.counts) == {"ec2", "ebs", "ebs-snapshot", "ami", "elastic-ip", "elb", "rds"}
    assert all(fleet.waste.values())
    assert all(fleet.traps.values())
