"""A terminate's undo launches the instance as it was launched: IMDSv2 still required, EBS
optimization, detailed monitoring, placement and tenancy, the source/destination check of a
NAT instance, and its Elastic IP when nothing else took the address since."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from backend.domain.resources import ResourceKind
from backend.providers.aws.operations import operation_for
from backend.providers.aws.operations_ec2 import launch_settings
from tests.integration.aws_fleet import client
from tests.integration.test_operations import REGION, linux_ami, make_ctx, subnet
from tests.support.fault_proxy import Fault, FaultProxy


@pytest.fixture
def ec2(moto_url: str) -> Any:
    return client(moto_url, "ec2", REGION)


def _nat_instance(ec2: Any) -> str:
    """An instance launched with IMDSv2 required, EBS optimized, monitored in detail, with
    its source/destination check off and an Elastic IP."""
    answer = ec2.run_instances(
        ImageId=linux_ami(ec2),
        MinCount=1,
        MaxCount=1,
        InstanceType="c5.large",
        SubnetId=subnet(ec2),
        MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 2},
        EbsOptimized=True,
        Monitoring={"Enabled": True},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "role", "Value": "nat"}]}],
    )
    iid = str(answer["Instances"][0]["InstanceId"])
    ec2.modify_instance_attribute(InstanceId=iid, SourceDestCheck={"Value": False})
    return iid


def _instance(ec2: Any, iid: str) -> dict[str, Any]:
    return dict(ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0])


def _terminated_with_image(moto_url: str, key: str, iid: str) -> tuple[Any, Any, Any, str]:
    ctx = make_ctx(moto_url, key=key)
    op = operation_for("terminate", ResourceKind.EC2_INSTANCE)
    before = op.describe(ctx, iid)
    image = op.backup(ctx, before)
    assert image is not None
    op.execute(ctx, before, {})
    assert op.verify(ctx, iid, {}) is None
    return ctx, op, before, image


def _terminated_nat(moto_url: str, ec2: Any, key: str) -> tuple[str, Any, tuple[Any, ...]]:
    """A NAT instance with an Elastic IP, imaged and terminated: its id, its address, and
    (context, operation, pre-state, image)."""
    iid = _nat_instance(ec2)
    address = ec2.allocate_address(Domain="vpc")
    ec2.associate_address(AllocationId=address["AllocationId"], InstanceId=iid)
    return iid, address, _terminated_with_image(moto_url, key, iid)


def test_the_relaunched_instance_is_launched_as_the_terminated_one_was(
    moto_url: str, ec2: Any
) -> None:
    iid, address, (ctx, op, before, image) = _terminated_nat(moto_url, ec2, "act-nat")

    result = op.undo(ctx, before, image, {})

    new_id = next(w for w in result.split() if w.startswith("i-") and w != iid)
    new = _instance(ec2, new_id)
    assert new["MetadataOptions"]["HttpTokens"] == "required"  # not IMDSv1 again
    assert new["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
    assert new["EbsOptimized"] is True
    assert new["Monitoring"]["State"] == "enabled"
    assert new["SourceDestCheck"] is False
    (eip,) = ec2.describe_addresses(AllocationIds=[address["AllocationId"]])["Addresses"]
    assert eip["InstanceId"] == new_id
    assert f"Elastic IP {address['PublicIp']} associated again" in result
    # a retried undo finds the instance and what it restored, and changes nothing more
    again = op.undo(ctx, before, image, {})
    assert again.startswith("already relaunched") and new_id in again
    assert f"Elastic IP {address['PublicIp']} associated again" in again
    (eip,) = ec2.describe_addresses(AllocationIds=[address["AllocationId"]])["Addresses"]
    assert eip["InstanceId"] == new_id


def test_an_elastic_ip_taken_by_another_instance_since_is_left_where_it_is(
    moto_url: str, ec2: Any
) -> None:
    _, address, (ctx, op, before, image) = _terminated_nat(moto_url, ec2, "act-nat-taken")
    other = _nat_instance(ec2)
    ec2.associate_address(
        AllocationId=address["AllocationId"], InstanceId=other, AllowReassociation=True
    )

    result = op.undo(ctx, before, image, {})

    (eip,) = ec2.describe_addresses(AllocationIds=[address["AllocationId"]])["Addresses"]
    assert eip["InstanceId"] == other
    assert f"Elastic IP {address['PublicIp']} is now with {other}: left there" in result


def test_steps_after_the_launch_that_aws_refuses_are_said_and_the_instance_is_back(
    moto_url: str, ec2: Any
) -> None:
    """A role not yet given AssociateAddress and ModifyInstanceAttribute: the undo relaunches
    and says what it could not do, rather than fail on every retry after the launch."""
    iid, address, (_, op, before, image) = _terminated_nat(moto_url, ec2, "act-nat-denied")
    proxy = FaultProxy(upstream=moto_url).start()
    try:
        for action in ("AssociateAddress", "ModifyInstanceAttribute"):
            proxy.faults.append(Fault(service="ec2", action=action))
        result = op.undo(make_ctx(proxy.url, key="act-nat-denied"), before, image, {})
    finally:
        proxy.stop()

    new_id = next(w for w in result.split() if w.startswith("i-") and w != iid)
    assert _instance(ec2, new_id)["State"]["Name"] == "running"
    assert f"Elastic IP {address['PublicIp']} NOT associated again" in result
    assert "source/destination check NOT turned off" in result


def test_an_aws_public_ip_and_a_released_elastic_ip_are_said_as_such(
    moto_url: str, ec2: Any
) -> None:
    iid = _nat_instance(ec2)
    ctx, op, before, image = _terminated_with_image(moto_url, "act-plain-ip", iid)
    public = before.attributes["PublicIpAddress"]
    aws_owned = dict(before.attributes)
    aws_owned["NetworkInterfaces"] = [{"Association": {"PublicIp": public, "IpOwnerId": "amazon"}}]
    result = op.undo(ctx, dataclasses.replace(before, attributes=aws_owned), image, {})
    assert f"public IP {public} was AWS's own, not an Elastic IP: not kept" in result

    iid = _nat_instance(ec2)
    address = ec2.allocate_address(Domain="vpc")
    ec2.associate_address(AllocationId=address["AllocationId"], InstanceId=iid)
    ctx, op, before, image = _terminated_with_image(moto_url, "act-released", iid)
    ec2.disassociate_address(PublicIp=address["PublicIp"])
    ec2.release_address(AllocationId=address["AllocationId"])
    result = op.undo(ctx, before, image, {})
    assert f"Elastic IP {address['PublicIp']} is no longer allocated" in result


def test_placement_and_tenancy_are_asked_for_again() -> None:
    dedicated = {
        "InstanceType": "m5.large",
        "Placement": {
            "AvailabilityZone": "us-east-1b",
            "GroupName": "low-latency",
            "Tenancy": "dedicated",
        },
        "MetadataOptions": {"State": "applied", "HttpTokens": "required"},
        "EbsOptimized": False,
        "Monitoring": {"State": "disabled"},
    }
    assert launch_settings(dedicated) == {
        "Placement": {
            "AvailabilityZone": "us-east-1b",
            "GroupName": "low-latency",
            "Tenancy": "dedicated",
        },
        "MetadataOptions": {"HttpTokens": "required"},
        "EbsOptimized": False,
    }
    # in a subnet the subnet says where; shared tenancy and no group are not asked for
    shared = {
        "SubnetId": "subnet-1",
        "Placement": {"AvailabilityZone": "us-east-1a", "GroupName": "", "Tenancy": "default"},
    }
    assert launch_settings(shared) == {"SubnetId": "subnet-1"}


def test_a_host_is_asked_for_only_with_host_affinity_and_imds_is_never_asked_away() -> None:
    on_host = {"Placement": {"Tenancy": "host", "HostId": "h-1", "Affinity": "default"}}
    assert launch_settings(on_host) == {"Placement": {"Tenancy": "host", "Affinity": "default"}}
    tied = {"Placement": {"Tenancy": "host", "HostId": "h-1", "Affinity": "host"}}
    assert launch_settings(tied)["Placement"]["HostId"] == "h-1"
    shared_group = {"Placement": {"GroupName": "g", "GroupId": "pg-1"}}
    assert launch_settings(shared_group) == {"Placement": {"GroupId": "pg-1"}}
    optional = {"MetadataOptions": {"HttpTokens": "optional", "HttpPutResponseHopLimit": 1}}
    assert launch_settings(optional) == {"MetadataOptions": {"HttpPutResponseHopLimit": 1}}
