"""Small fleets for integration tests, created through boto3 on a moto_server."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import boto3

SECOND_ACCOUNT = "222222222222"
ROLE_NAME = "finops-scanner"
# One of moto's bundled Amazon Linux images, in every region: looking one up with
# describe_images(Owners=["amazon"]) serializes 1,300 images, 1 to 10 s a call on moto_server.
MOTO_LINUX_AMI = "ami-760aaa0f"  # amzn-ami-hvm-2017.09


def client(endpoint: str, service: str, region: str, creds: dict[str, str] | None = None) -> Any:
    kw: dict[str, Any] = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    if creds:
        kw = {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }
    return boto3.client(service, region_name=region, endpoint_url=endpoint, **kw)


def assumed_credentials(endpoint: str, account: str = SECOND_ACCOUNT) -> dict[str, str]:
    sts = client(endpoint, "sts", "us-east-1")
    arn = f"arn:aws:iam::{account}:role/{ROLE_NAME}"
    return dict(sts.assume_role(RoleArn=arn, RoleSessionName="seed")["Credentials"])


def launch(ec2: Any, tags: dict[str, str], instance_type: str = "t3.micro") -> str:
    """One instance of an Amazon image, with these tags; its id."""
    spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
    run = ec2.run_instances(
        ImageId=MOTO_LINUX_AMI,
        MinCount=1,
        MaxCount=1,
        InstanceType=instance_type,
        TagSpecifications=spec,
    )
    return str(run["Instances"][0]["InstanceId"])


@dataclass
class Fleet:
    ids: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, rid: str) -> str:
        self.ids.setdefault(kind, []).append(rid)
        return rid


def seed_region(
    endpoint: str, region: str, creds: dict[str, str] | None = None, *, instances: int = 3
) -> Fleet:
    """Every kind at least once: instances (one stopped), volumes (one attached), a snapshot,
    an AMI, addresses (one associated), an ALB and an NLB, an RDS instance; CPU metrics."""
    fleet = Fleet()
    ec2 = client(endpoint, "ec2", region, creds)
    ami = MOTO_LINUX_AMI  # Linux: as the price table
    zone = f"{region}a"
    run = ec2.run_instances(
        ImageId=ami,
        MinCount=instances,
        MaxCount=instances,
        InstanceType="m5.large",
        Placement={"AvailabilityZone": zone},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "env", "Value": "dev"}]}],
    )
    ids = [fleet.add("ec2", i["InstanceId"]) for i in run["Instances"]]
    ec2.stop_instances(InstanceIds=ids[:1])
    attached = ec2.create_volume(AvailabilityZone=zone, Size=100, VolumeType="gp2")["VolumeId"]
    ec2.attach_volume(VolumeId=attached, InstanceId=ids[-1], Device="/dev/sdz")
    loose = ec2.create_volume(
        AvailabilityZone=zone,
        Size=50,
        VolumeType="gp3",
        TagSpecifications=[
            {"ResourceType": "volume", "Tags": [{"Key": "owner", "Value": "team-a"}]}
        ],
    )["VolumeId"]
    # the instances' root volumes are volumes too
    fleet.ids["ebs"] = [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]]
    assert attached in fleet.ids["ebs"] and loose in fleet.ids["ebs"]
    fleet.add("ebs-snapshot", ec2.create_snapshot(VolumeId=loose)["SnapshotId"])
    image = ec2.create_image(InstanceId=ids[-1], Name=f"backup-{region}")["ImageId"]
    fleet.add("ami", image)
    owner = client(endpoint, "sts", region, creds).get_caller_identity()["Account"]
    # moto ignores OwnerIds=self and returns its public AMI snapshots too
    fleet.ids["ebs-snapshot"] = [
        s["SnapshotId"]
        for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
        if s["OwnerId"] == owner
    ]
    for i in range(2):
        alloc = ec2.allocate_address(Domain="vpc")["AllocationId"]
        fleet.add("elastic-ip", alloc)
        if i == 0:
            ec2.associate_address(AllocationId=alloc, InstanceId=ids[-1])
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnets = [
        s["SubnetId"]
        for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
    ][:2]
    elbv2 = client(endpoint, "elbv2", region, creds)
    for name, lb_type in (("web", "application"), ("tcp", "network")):
        lb = elbv2.create_load_balancer(
            Name=f"{name}-{region}",
            Subnets=subnets,
            Type=lb_type,
            Tags=[{"Key": "env", "Value": "dev"}],
        )
        fleet.add("elb", lb["LoadBalancers"][0]["LoadBalancerArn"])
    rds = client(endpoint, "rds", region, creds)
    rds.create_db_instance(
        DBInstanceIdentifier=f"db-{region}",
        DBInstanceClass="db.t3.medium",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername="admin",
        MasterUserPassword="password123",
        Tags=[{"Key": "env", "Value": "prod"}],
    )
    fleet.add("rds", f"db-{region}")
    cw = client(endpoint, "cloudwatch", region, creds)
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    for n, iid in enumerate(ids):
        cw.put_metric_data(
            Namespace="AWS/EC2",
            MetricData=[
                {
                    "MetricName": "CPUUtilization",
                    "Value": 2.0 + 40 * n,
                    "Unit": "Percent",
                    "Dimensions": [{"Name": "InstanceId", "Value": iid}],
                    "Timestamp": now - dt.timedelta(days=d + 1),
                }
                for d in range(14)
            ],
        )
    return fleet
