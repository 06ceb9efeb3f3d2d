"""What else depends on a resource, asked of AWS right before acting on it.

The safety checker blocks on any of these facts. Every AWS error propagates: a probe that
could not finish is no evidence that nothing depends on the resource (fail closed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from backend.domain.resources import Resource, ResourceKind
from backend.providers.aws.describe import pages
from backend.providers.aws.operations_base import OperationContext, read
from backend.providers.aws.retry import error_code

K = ResourceKind
_AMI_ID = re.compile(r"\bami-[0-9a-f]{8,17}\b")
# CreateImage writes "Created by CreateImage(i-..) for ami-.. from vol-..";
# CopyImage "Copied for DestinationAmi ami-.. from SourceAmi ami-..".
_AMI_MARKERS = ("CreateImage(", "for ami-", "DestinationAmi")


@dataclass(frozen=True)
class DependencyFacts:
    in_auto_scaling_group: str | None = None  # the group's name
    termination_protected: bool = False
    stop_protected: bool = False
    load_balancer_targets: tuple[str, ...] = ()  # target group ARNs the instance is in
    attached_to: tuple[str, ...] = ()  # instances a volume is attached to
    is_root_device_of: str | None = None  # the instance this volume boots
    backs_amis: tuple[str, ...] = ()  # AMIs built on this snapshot
    associated_with: str | None = None  # the instance or network interface of an address
    serving_targets: tuple[str, ...] = ()  # a load balancer's targets in service now
    launched_by: tuple[str, ...] = ()  # launch templates and configurations naming an AMI
    replication: tuple[str, ...] = ()  # a database's replicas, its source, or its cluster
    # a snapshot's source volume, read now: True it exists, False it is gone, None no volume
    # named (the inventory's volume list may be hours old, or from a scan that failed)
    source_volume_exists: bool | None = None


def probe_dependencies(ctx: OperationContext, resource: Resource) -> DependencyFacts:
    if resource.kind is K.EC2_INSTANCE:
        return _instance(ctx, resource)
    if resource.kind is K.EBS_VOLUME:
        return _volume(ctx, resource.resource_id)
    if resource.kind is K.EBS_SNAPSHOT:
        return DependencyFacts(
            backs_amis=backing_amis(ctx, resource.resource_id),
            source_volume_exists=_source_volume_exists(ctx, resource),
        )
    if resource.kind is K.ELASTIC_IP:
        return _address(ctx, resource.resource_id)
    if resource.kind is K.LOAD_BALANCER:
        return DependencyFacts(serving_targets=_serving_targets(ctx, resource.resource_id))
    if resource.kind is K.AMI:
        return DependencyFacts(launched_by=_launchers_of(ctx, resource.resource_id))
    if resource.kind is K.RDS_INSTANCE:
        return DependencyFacts(replication=_replication(resource))
    return DependencyFacts()


def _replication(database: Resource) -> tuple[str, ...]:
    """From the fresh describe: read replicas, the source it replicates, its Aurora cluster
    (a database in any of these is not stopped on its own)."""
    attrs = database.attributes
    found = [f"read replica {r}" for r in attrs.get("ReadReplicaDBInstanceIdentifiers") or ()]
    if attrs.get("ReadReplicaSourceDBInstanceIdentifier"):
        found.append(f"replica of {attrs['ReadReplicaSourceDBInstanceIdentifier']}")
    if attrs.get("DBClusterIdentifier"):
        found.append(f"member of cluster {attrs['DBClusterIdentifier']}")
    return tuple(found)


def _launchers_of(ctx: OperationContext, image_id: str) -> tuple[str, ...]:
    """Launch templates (their default and latest versions) and launch configurations that
    launch this image: an Auto Scaling group using one could no longer replace instances."""
    found = []
    for page in pages(ctx.client_for("ec2"), "describe_launch_templates", MaxResults=200):
        for template in page["LaunchTemplates"]:
            versions = read(
                ctx,
                "ec2",
                "describe_launch_template_versions",
                LaunchTemplateId=template["LaunchTemplateId"],
                Versions=["$Default", "$Latest"],
            )["LaunchTemplateVersions"]
            images = {(v.get("LaunchTemplateData") or {}).get("ImageId") for v in versions}
            if image_id in images:
                found.append(f"launch template {template['LaunchTemplateName']}")
    configurations = pages(
        ctx.client_for("autoscaling"), "describe_launch_configurations", MaxRecords=100
    )
    found += [
        f"launch configuration {c['LaunchConfigurationName']}"
        for page in configurations
        for c in page["LaunchConfigurations"]
        if c.get("ImageId") == image_id
    ]
    return tuple(found)


# Targets in these states receive traffic, or are about to (or finish what they had).
_IN_SERVICE = frozenset({"healthy", "initial", "draining"})


def _serving_targets(ctx: OperationContext, arn: str) -> tuple[str, ...]:
    """The targets of the load balancer's target groups that are in service now: a load
    balancer idle by last week's request count may have gone into service since."""
    found: list[str] = []
    kwargs: dict[str, Any] = {"LoadBalancerArn": arn, "PageSize": 400}
    while True:
        try:
            page = read(ctx, "elbv2", "describe_target_groups", **kwargs)
        except ClientError as exc:
            # Asked by load balancer, this says it has none (moto answers so; AWS answers an
            # empty list): nothing is in service behind it. Any other error propagates.
            if error_code(exc) == "TargetGroupNotFound":
                return tuple(sorted(found))
            raise
        for group in page["TargetGroups"]:
            health = read(
                ctx, "elbv2", "describe_target_health", TargetGroupArn=group["TargetGroupArn"]
            )
            found += [
                f"{d['Target']['Id']} ({d['TargetHealth']['State']})"
                for d in health["TargetHealthDescriptions"]
                if (d.get("TargetHealth") or {}).get("State") in _IN_SERVICE
            ]
        if not page.get("NextMarker"):
            return tuple(sorted(found))
        kwargs["Marker"] = page["NextMarker"]


def _source_volume_exists(ctx: OperationContext, snapshot: Resource) -> bool | None:
    volume_id = snapshot.attributes.get("VolumeId")
    if not isinstance(volume_id, str) or not volume_id:
        return None
    try:
        volumes = read(ctx, "ec2", "describe_volumes", VolumeIds=[volume_id])["Volumes"]
    except ClientError as exc:
        if error_code(exc) == "InvalidVolume.NotFound":
            return False
        raise
    return any(v.get("State") not in ("deleted", "deleting") for v in volumes)


def _instance(ctx: OperationContext, resource: Resource) -> DependencyFacts:
    iid = resource.resource_id
    members = read(ctx, "autoscaling", "describe_auto_scaling_instances", InstanceIds=[iid])
    group = next((m["AutoScalingGroupName"] for m in members["AutoScalingInstances"]), None)
    # the tag outlives a detach by a moment; either is enough to stay away
    group = group or resource.tags.get("aws:autoscaling:groupName")
    return DependencyFacts(
        in_auto_scaling_group=group,
        termination_protected=_attribute(ctx, iid, "disableApiTermination"),
        stop_protected=_attribute(ctx, iid, "disableApiStop"),
        load_balancer_targets=(
            *_target_groups_of(ctx, iid, _private_ips(resource)),
            *_classic_load_balancers_of(ctx, iid),
        ),
    )


def _classic_load_balancers_of(ctx: OperationContext, instance_id: str) -> tuple[str, ...]:
    """Classic load balancers (the elb API, not elbv2) with this instance registered."""
    return tuple(
        f"classic load balancer {lb['LoadBalancerName']}"
        for page in pages(ctx.client_for("elb"), "describe_load_balancers", PageSize=400)
        for lb in page["LoadBalancerDescriptions"]
        if any(i.get("InstanceId") == instance_id for i in lb.get("Instances") or ())
    )


def _attribute(ctx: OperationContext, instance_id: str, name: str) -> bool:
    answer = read(ctx, "ec2", "describe_instance_attribute", InstanceId=instance_id, Attribute=name)
    key = name[0].upper() + name[1:]
    return bool((answer.get(key) or {}).get("Value", False))


def _private_ips(resource: Resource) -> set[str]:
    ips = {
        str(a["PrivateIpAddress"])
        for eni in resource.attributes.get("NetworkInterfaces") or ()
        for a in eni.get("PrivateIpAddresses") or ()
        if a.get("PrivateIpAddress")
    }
    if resource.attributes.get("PrivateIpAddress"):
        ips.add(str(resource.attributes["PrivateIpAddress"]))
    return ips


def _target_groups_of(ctx: OperationContext, instance_id: str, ips: set[str]) -> tuple[str, ...]:
    """Target groups with this instance registered (by id, or by address for ip targets)."""
    found = []
    for page in pages(ctx.client_for("elbv2"), "describe_target_groups", PageSize=400):
        for group in page["TargetGroups"]:
            kind = group.get("TargetType", "instance")
            if kind not in ("instance", "ip"):
                continue
            arn = group["TargetGroupArn"]
            health = read(ctx, "elbv2", "describe_target_health", TargetGroupArn=arn)
            ids = {d["Target"]["Id"] for d in health["TargetHealthDescriptions"]}
            if instance_id in ids or (kind == "ip" and ids & ips):
                found.append(str(arn))
    return tuple(found)


def _volume(ctx: OperationContext, volume_id: str) -> DependencyFacts:
    volume = read(ctx, "ec2", "describe_volumes", VolumeIds=[volume_id])["Volumes"][0]
    attachments = [a for a in volume.get("Attachments") or () if a.get("InstanceId")]
    root_of = None
    if attachments:
        ids = sorted({a["InstanceId"] for a in attachments})
        answer = read(ctx, "ec2", "describe_instances", InstanceIds=ids)
        roots = {
            inst["InstanceId"]: inst.get("RootDeviceName")
            for reservation in answer["Reservations"]
            for inst in reservation["Instances"]
        }
        root_of = next(
            (
                str(a["InstanceId"])
                for a in attachments
                if roots.get(a["InstanceId"])
                and _device(roots[a["InstanceId"]]) == _device(a.get("Device"))
            ),
            None,
        )
    return DependencyFacts(
        attached_to=tuple(str(a["InstanceId"]) for a in attachments), is_root_device_of=root_of
    )


def _device(name: str | None) -> str:
    """/dev/sda1, /dev/sda and /dev/xvda name one root device (Xen renames sd to xvd;
    moto attaches the root at /dev/sda1 whatever the AMI's root name). Erring towards
    "root" only ever blocks."""
    short = (name or "").removeprefix("/dev/")
    if short.startswith("xvd"):
        short = "sd" + short[3:]
    return short.rstrip("0123456789")


def backing_amis(ctx: OperationContext, snapshot_id: str) -> tuple[str, ...]:
    """Our AMIs whose block devices come from this snapshot.

    Not by a block-device-mapping.snapshot-id filter (moto answers it with a 500): our
    images' mappings, plus the AMI that the snapshot's own description names, if it exists.
    """
    found: set[str] = set()
    for page in pages(ctx.client_for("ec2"), "describe_images", Owners=["self"]):
        for image in page["Images"]:
            for mapping in image.get("BlockDeviceMappings") or ():
                if (mapping.get("Ebs") or {}).get("SnapshotId") == snapshot_id:
                    found.add(str(image["ImageId"]))
    snapshot = read(ctx, "ec2", "describe_snapshots", SnapshotIds=[snapshot_id])["Snapshots"][0]
    description = str(snapshot.get("Description") or "")
    if any(marker in description for marker in _AMI_MARKERS):
        for image_id in sorted(set(_AMI_ID.findall(description)) - found):
            if _image_exists(ctx, image_id):
                found.add(image_id)
    return tuple(sorted(found))


def _image_exists(ctx: OperationContext, image_id: str) -> bool:
    try:
        images = read(ctx, "ec2", "describe_images", ImageIds=[image_id])["Images"]
    except ClientError as exc:
        if error_code(exc) in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
            return False
        raise
    return any(i.get("State") not in ("deregistered", "failed") for i in images)


def _address(ctx: OperationContext, address_id: str) -> DependencyFacts:
    by = "AllocationIds" if address_id.startswith("eipalloc-") else "PublicIps"
    address = read(ctx, "ec2", "describe_addresses", **{by: [address_id]})["Addresses"][0]
    if not address.get("AssociationId"):
        return DependencyFacts()
    # moto answers "" for the id it does not have
    target = address.get("InstanceId") or address.get("NetworkInterfaceId") or None
    return DependencyFacts(associated_with=str(target or address["AssociationId"]))
