"""Dependency facts asked of a moto_server; errors while probing propagate (fail closed)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from backend.domain.resources import Resource, ResourceKind
from backend.providers.aws.dependencies import DependencyFacts, probe_dependencies
from backend.providers.aws.operations import OperationContext, operation_for
from tests.integration.aws_fleet import client
from tests.integration.test_operations import REGION, launch, linux_ami, make_ctx, volume
from tests.support.fault_proxy import Fault, FaultProxy

pytestmark = pytest.mark.moto_server
K = ResourceKind


@pytest.fixture
def ec2(moto_url: str) -> Any:
    return client(moto_url, "ec2", REGION)


def facts(ctx: OperationContext, kind: ResourceKind, rid: str) -> DependencyFacts:
    resource: Resource = operation_for("mark", kind).describe(ctx, rid)
    return probe_dependencies(ctx, resource)


def test_a_plain_instance_has_no_dependencies(moto_url: str, ec2: Any) -> None:
    iid = launch(ec2)
    assert facts(make_ctx(moto_url), K.EC2_INSTANCE, iid) == DependencyFacts()


def test_an_auto_scaling_group_member_is_named(moto_url: str, ec2: Any) -> None:
    ec2.create_launch_template(
        LaunchTemplateName="workers",
        LaunchTemplateData={"ImageId": linux_ami(ec2), "InstanceType": "t3.micro"},
    )
    asg = client(moto_url, "autoscaling", REGION)
    asg.create_auto_scaling_group(
        AutoScalingGroupName="workers-asg",
        LaunchTemplate={"LaunchTemplateName": "workers", "Version": "$Latest"},
        MinSize=1,
        MaxSize=1,
        DesiredCapacity=1,
        VPCZoneIdentifier=ec2.describe_subnets()["Subnets"][0]["SubnetId"],
    )
    member = asg.describe_auto_scaling_groups()["AutoScalingGroups"][0]["Instances"][0]
    got = facts(make_ctx(moto_url), K.EC2_INSTANCE, member["InstanceId"])
    assert got.in_auto_scaling_group == "workers-asg"


def test_termination_and_stop_protection(moto_url: str, ec2: Any) -> None:
    protected, stop_protected = launch(ec2), launch(ec2)
    ec2.modify_instance_attribute(InstanceId=protected, DisableApiTermination={"Value": True})
    ec2.modify_instance_attribute(InstanceId=stop_protected, DisableApiStop={"Value": True})
    ctx = make_ctx(moto_url)
    one = facts(ctx, K.EC2_INSTANCE, protected)
    assert (one.termination_protected, one.stop_protected) == (True, False)
    two = facts(ctx, K.EC2_INSTANCE, stop_protected)
    assert (two.termination_protected, two.stop_protected) == (False, True)


def test_an_instance_registered_in_a_target_group(moto_url: str, ec2: Any) -> None:
    iid, other = launch(ec2), launch(ec2)
    elbv2 = client(moto_url, "elbv2", REGION)
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    arns = [
        elbv2.create_target_group(Name=name, Protocol="HTTP", Port=80, VpcId=vpc)["TargetGroups"][
            0
        ]["TargetGroupArn"]
        for name in ("web", "empty")
    ]
    elbv2.register_targets(TargetGroupArn=arns[0], Targets=[{"Id": iid}])
    ctx = make_ctx(moto_url)
    assert facts(ctx, K.EC2_INSTANCE, iid).load_balancer_targets == (arns[0],)
    assert facts(ctx, K.EC2_INSTANCE, other).load_balancer_targets == ()


def test_an_instance_behind_a_classic_load_balancer(moto_url: str, ec2: Any) -> None:
    iid, other = launch(ec2), launch(ec2)
    elb = client(moto_url, "elb", REGION)
    elb.create_load_balancer(
        LoadBalancerName="legacy-web",
        Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80, "InstancePort": 80}],
        AvailabilityZones=[f"{REGION}a"],
    )
    elb.register_instances_with_load_balancer(
        LoadBalancerName="legacy-web", Instances=[{"InstanceId": iid}]
    )
    ctx = make_ctx(moto_url)
    got = facts(ctx, K.EC2_INSTANCE, iid).load_balancer_targets
    assert got == ("classic load balancer legacy-web",)
    assert facts(ctx, K.EC2_INSTANCE, other).load_balancer_targets == ()


def test_a_load_balancer_s_targets_in_service(moto_url: str, ec2: Any) -> None:
    elbv2 = client(moto_url, "elbv2", REGION)
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if s["VpcId"] == vpc]
    arn = elbv2.create_load_balancer(Name="web", Subnets=subnets[:2])["LoadBalancers"][0][
        "LoadBalancerArn"
    ]
    ctx = make_ctx(moto_url)
    assert facts(ctx, K.LOAD_BALANCER, arn).serving_targets == ()  # no target group at all
    group = elbv2.create_target_group(Name="web", Protocol="HTTP", Port=80, VpcId=vpc)
    group_arn = group["TargetGroups"][0]["TargetGroupArn"]
    elbv2.create_listener(
        LoadBalancerArn=arn,
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": group_arn}],
    )
    assert facts(ctx, K.LOAD_BALANCER, arn).serving_targets == ()  # a group, no target
    iid = launch(ec2)
    elbv2.register_targets(TargetGroupArn=group_arn, Targets=[{"Id": iid}])
    assert facts(ctx, K.LOAD_BALANCER, arn).serving_targets == (f"{iid} (healthy)",)


def test_attached_and_root_volumes(moto_url: str, ec2: Any) -> None:
    iid = launch(ec2)
    data = volume(ec2, {"owner": "x"})
    ec2.attach_volume(VolumeId=data, InstanceId=iid, Device="/dev/sdf")
    root = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0][
        "BlockDeviceMappings"
    ][0]["Ebs"]["VolumeId"]
    loose = volume(ec2, {"owner": "y"})
    ctx = make_ctx(moto_url)
    assert facts(ctx, K.EBS_VOLUME, data) == DependencyFacts(attached_to=(iid,))
    assert facts(ctx, K.EBS_VOLUME, root) == DependencyFacts(
        attached_to=(iid,), is_root_device_of=iid
    )
    assert facts(ctx, K.EBS_VOLUME, loose) == DependencyFacts()


def test_a_snapshot_behind_an_ami(moto_url: str, ec2: Any) -> None:
    image = ec2.create_image(InstanceId=launch(ec2), Name="golden")["ImageId"]
    behind = ec2.describe_images(ImageIds=[image])["Images"][0]["BlockDeviceMappings"][0]["Ebs"][
        "SnapshotId"
    ]
    plain = ec2.create_snapshot(VolumeId=volume(ec2, {"owner": "x"}))["SnapshotId"]
    ctx = make_ctx(moto_url)
    assert facts(ctx, K.EBS_SNAPSHOT, behind).backs_amis == (image,)
    assert facts(ctx, K.EBS_SNAPSHOT, plain).backs_amis == ()
    ec2.deregister_image(ImageId=image)  # the description still names it; it is gone
    assert facts(ctx, K.EBS_SNAPSHOT, behind).backs_amis == ()


def test_an_image_that_launch_templates_and_configurations_launch(moto_url: str, ec2: Any) -> None:
    image = ec2.create_image(InstanceId=launch(ec2), Name="golden")["ImageId"]
    other = ec2.create_image(InstanceId=launch(ec2), Name="old")["ImageId"]
    ctx = make_ctx(moto_url)
    assert facts(ctx, K.AMI, image).launched_by == ()
    ec2.create_launch_template(
        LaunchTemplateName="workers",
        LaunchTemplateData={"ImageId": linux_ami(ec2), "InstanceType": "t3.micro"},
    )
    ec2.create_launch_template_version(  # the latest version: not yet the default
        LaunchTemplateName="workers", LaunchTemplateData={"ImageId": image}
    )
    client(moto_url, "autoscaling", REGION).create_launch_configuration(
        LaunchConfigurationName="legacy", ImageId=image, InstanceType="t3.micro"
    )
    assert facts(ctx, K.AMI, image).launched_by == (
        "launch template workers",
        "launch configuration legacy",
    )
    assert facts(ctx, K.AMI, other).launched_by == ()


def test_an_associated_address(moto_url: str, ec2: Any) -> None:
    iid = launch(ec2)
    used = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(AllocationId=used, InstanceId=iid)
    free = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ctx = make_ctx(moto_url)
    assert facts(ctx, K.ELASTIC_IP, used).associated_with == iid
    assert facts(ctx, K.ELASTIC_IP, free) == DependencyFacts()


@pytest.mark.parametrize(
    ("service", "kind"),
    [("autoscaling", K.EC2_INSTANCE), ("elasticloadbalancing", K.EC2_INSTANCE), ("ec2", None)],
)
def test_an_error_while_probing_propagates(
    moto_url: str, ec2: Any, service: str, kind: ResourceKind | None
) -> None:
    iid = launch(ec2)
    snap = ec2.create_snapshot(VolumeId=volume(ec2, {"owner": "x"}))["SnapshotId"]
    proxy = FaultProxy(upstream=moto_url).start()
    try:
        ctx = make_ctx(proxy.url)
        resource = operation_for("mark", kind or K.EBS_SNAPSHOT).describe(
            ctx, iid if kind else snap
        )
        proxy.faults.append(Fault(service=service, kind="access-denied"))
        with pytest.raises(ClientError, match="UnauthorizedOperation"):
            probe_dependencies(ctx, resource)
    finally:
        proxy.stop()


def test_a_database_with_a_replica_its_source_and_a_cluster_member(moto_url: str) -> None:
    rds = client(moto_url, "rds", REGION)
    rds.create_db_instance(
        DBInstanceIdentifier="primary",
        DBInstanceClass="db.t3.medium",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername="admin",
        MasterUserPassword="password123",
    )
    ctx = make_ctx(moto_url)
    assert facts(ctx, K.RDS_INSTANCE, "primary").replication == ()
    rds.create_db_instance_read_replica(
        DBInstanceIdentifier="replica", SourceDBInstanceIdentifier="primary"
    )
    assert facts(ctx, K.RDS_INSTANCE, "primary").replication == ("read replica replica",)
    assert facts(ctx, K.RDS_INSTANCE, "replica").replication == ("replica of primary",)
