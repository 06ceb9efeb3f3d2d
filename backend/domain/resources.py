"""Resource kinds and the typed records the inventory holds.

A `Resource` keeps AWS's own describe output (minus tags) in `attributes`, so a policy can
compare any field by its AWS name (`InstanceType`, `State.Name`, `VolumeType`), the way a
Cloud Custodian user expects. The columns that every kind shares are lifted out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ResourceKind(StrEnum):
    EC2_INSTANCE = "ec2"
    EBS_VOLUME = "ebs"
    EBS_SNAPSHOT = "ebs-snapshot"
    AMI = "ami"
    ELASTIC_IP = "elastic-ip"
    LOAD_BALANCER = "elb"  # application and network load balancers (elbv2); Type says which
    RDS_INSTANCE = "rds"

    @classmethod
    def parse(cls, text: str) -> ResourceKind:
        """Accept our names and Custodian's (`aws.ec2`, `aws.app-elb`, `aws.ebs-snapshot`)."""
        name = text.strip().lower().removeprefix("aws.")
        name = _ALIASES.get(name, name)
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(k.value for k in cls)
            raise ValueError(f"unknown resource kind {text!r}; expected one of: {known}") from None


_ALIASES = {
    "ec2-instance": "ec2",
    "instance": "ec2",
    "volume": "ebs",
    "ebs-volume": "ebs",
    "snapshot": "ebs-snapshot",
    "image": "ami",
    "eip": "elastic-ip",
    "address": "elastic-ip",
    "app-elb": "elb",
    "alb": "elb",
    "nlb": "elb",
    "load-balancer": "elb",
    "rds-instance": "rds",
}


@dataclass(frozen=True, slots=True)
class Resource:
    """One cloud resource as last seen by a scan.

    `resource_id` is AWS's own id: InstanceId, VolumeId, SnapshotId, ImageId, AllocationId,
    LoadBalancerArn, DBInstanceIdentifier. `state` is normalised to AWS's state word
    (`running`, `stopped`, `available`, `in-use`, `completed`, `active`, `associated`, ...).
    """

    kind: ResourceKind
    resource_id: str
    account_id: str
    region: str
    state: str
    tags: Mapping[str, str] = field(default_factory=dict)
    attributes: Mapping[str, Any] = field(default_factory=dict)
    created_at: dt.datetime | None = None
    state_changed_at: dt.datetime | None = None  # EC2: parsed from StateTransitionReason

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.account_id, self.region, self.kind.value, self.resource_id)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One CloudWatch series summarised over a window: the unit of metric work.

    Many policies asking for the same (metric, statistic, window) share one query.
    """

    namespace: str
    metric: str
    statistic: str  # Average, Sum, Maximum, Minimum, SampleCount
    days: int


@dataclass(frozen=True, slots=True)
class MetricDimension:
    """How a kind's resources are named in CloudWatch."""

    namespace: str
    dimension: str


# Which metrics each kind has, and under which dimension. A metric filter on a kind
# without the metric is a validation error.
KIND_METRICS: dict[ResourceKind, tuple[MetricDimension, frozenset[str]]] = {
    ResourceKind.EC2_INSTANCE: (
        MetricDimension("AWS/EC2", "InstanceId"),
        frozenset(
            {"CPUUtilization", "NetworkIn", "NetworkOut", "NetworkPacketsIn", "NetworkPacketsOut"}
        ),
    ),
    ResourceKind.EBS_VOLUME: (
        MetricDimension("AWS/EBS", "VolumeId"),
        frozenset(
            {
                "VolumeReadOps",
                "VolumeWriteOps",
                "VolumeReadBytes",
                "VolumeWriteBytes",
                "VolumeIdleTime",
            }
        ),
    ),
    ResourceKind.LOAD_BALANCER: (
        MetricDimension("AWS/ApplicationELB", "LoadBalancer"),
        frozenset(
            {
                "RequestCount",
                "ActiveConnectionCount",
                "NewConnectionCount",
                "ProcessedBytes",
                "HealthyHostCount",
            }
        ),
    ),
    ResourceKind.RDS_INSTANCE: (
        MetricDimension("AWS/RDS", "DBInstanceIdentifier"),
        frozenset(
            {"DatabaseConnections", "CPUUtilization", "ReadIOPS", "WriteIOPS", "FreeStorageSpace"}
        ),
    ),
}

STATISTICS = frozenset({"Average", "Sum", "Maximum", "Minimum", "SampleCount"})


def metric_dimension_value(resource: Resource, namespace: str) -> str:
    """The dimension value CloudWatch files this resource under."""
    if resource.kind is ResourceKind.LOAD_BALANCER:
        # app/NAME/ID from the ARN; a network load balancer lives in AWS/NetworkELB
        return resource.resource_id.split(":loadbalancer/", 1)[-1]
    return resource.resource_id


def metric_namespace(resource: Resource, spec_namespace: str) -> str:
    if resource.kind is ResourceKind.LOAD_BALANCER and resource.attributes.get("Type") == "network":
        return "AWS/NetworkELB"
    return spec_namespace


MetricValues = Mapping[tuple[str, MetricSpec], float | None]
"""Summaries keyed by (resource_id, spec); None means CloudWatch had no datapoints.

Ids are unique only within one (account, region): evaluate each (account, region) with its
own metrics (an RDS identifier may repeat in another region)."""
