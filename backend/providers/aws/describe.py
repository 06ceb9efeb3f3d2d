"""One paginated describe per (account, region, kind), turned into `Resource` records.

Each page is retried on its own (a throttled page 7 does not restart pages 1 to 6).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from backend.domain.resources import Resource, ResourceKind
from backend.providers.aws.retry import call

Describer = Callable[[Callable[[str], Any], str, str], list[Resource]]
"""(client_for(service), account_id, region) -> resources"""

# (request token, response token) per paginated operation.
_TOKENS: dict[str, tuple[str, str]] = {
    "describe_instances": ("NextToken", "NextToken"),
    "describe_volumes": ("NextToken", "NextToken"),
    "describe_snapshots": ("NextToken", "NextToken"),
    "describe_images": ("NextToken", "NextToken"),
    "describe_load_balancers": ("Marker", "NextMarker"),  # elbv2 and the classic elb
    "describe_db_instances": ("Marker", "Marker"),
    "describe_target_groups": ("Marker", "NextMarker"),
    "describe_launch_templates": ("NextToken", "NextToken"),
    "describe_launch_configurations": ("NextToken", "NextToken"),
}


def pages(client: Any, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    token_in, token_out = _TOKENS[operation]
    method = getattr(client, operation)
    while True:
        page: dict[str, Any] = call(method, **kwargs)
        yield page
        token = page.get(token_out)
        if not token:
            return
        kwargs[token_in] = token


def jsonable(value: Any) -> Any:
    """AWS answers hold datetimes; the inventory stores JSON."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def tag_dict(tags: list[dict[str, str]] | None) -> dict[str, str]:
    """For EC2 answers only, where AWS leaves "Tags" out when a resource has none."""
    return {t["Key"]: t.get("Value", "") for t in tags or ()}


class UnknownTagsError(Exception):
    """An answer that always carries tags came back without them. Read as "no tags", the
    opt-out and protected tags would be ignored; raising fails the inventory part and
    blocks the pre-execution judgement instead (fail closed)."""


def required_tags(holder: Mapping[str, Any], key: str, what: str) -> dict[str, str]:
    """Tags from a key AWS always sends (present and empty means no tags; absent, unknown)."""
    tags = holder.get(key)
    if tags is None:
        raise UnknownTagsError(f"{what}: the answer has no {key}, its tags are unknown")
    return tag_dict(tags)


def _aware(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return None


_TRANSITION_TIME = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")


def transition_time(reason: str | None) -> dt.datetime | None:
    """EC2 writes "User initiated (2024-05-01 12:00:00 GMT)" when it stops (moto: UTC)."""
    match = _TRANSITION_TIME.search(reason or "")
    if not match:
        return None
    return dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)


def _record(
    kind: ResourceKind,
    rid: str,
    account: str,
    region: str,
    state: str,
    raw: Mapping[str, Any],
    tags: dict[str, str],
    created: Any,
    state_changed: dt.datetime | None = None,
    drop: tuple[str, ...] = ("Tags",),
) -> Resource:
    attributes = jsonable({k: v for k, v in raw.items() if k not in drop})
    return Resource(
        kind=kind,
        resource_id=rid,
        account_id=account,
        region=region,
        state=state,
        tags=tags,
        attributes=attributes,
        created_at=_aware(created),
        state_changed_at=state_changed,
    )


# EC2 (instances, volumes, snapshots, AMIs, addresses): the EC2 API omits "Tags" when a
# resource has none and has no separate tag call, so a missing key means no tags.
# ELBv2 and RDS always send their tags (DescribeTags: one entry per ARN asked, each with
# "Tags"; DescribeDBInstances: "TagList"), so there a missing entry or key is unknown.


def describe_instances(
    client_for: Callable[[str], Any], account: str, region: str
) -> list[Resource]:
    out = []
    for page in pages(client_for("ec2"), "describe_instances", MaxResults=1000):
        for reservation in page["Reservations"]:
            for inst in reservation["Instances"]:
                state = inst["State"]["Name"]
                if state == "terminated":  # gone from the account's point of view
                    continue
                out.append(
                    _record(
                        ResourceKind.EC2_INSTANCE,
                        inst["InstanceId"],
                        account,
                        region,
                        state,
                        inst,
                        tag_dict(inst.get("Tags")),
                        inst.get("LaunchTime"),
                        transition_time(inst.get("StateTransitionReason")),
                    )
                )
    return out


def describe_volumes(client_for: Callable[[str], Any], account: str, region: str) -> list[Resource]:
    return [
        _record(
            ResourceKind.EBS_VOLUME,
            v["VolumeId"],
            account,
            region,
            v["State"],
            v,
            tag_dict(v.get("Tags")),
            v.get("CreateTime"),
        )
        for page in pages(client_for("ec2"), "describe_volumes", MaxResults=500)
        for v in page["Volumes"]
    ]


def describe_snapshots(
    client_for: Callable[[str], Any], account: str, region: str
) -> list[Resource]:
    return [
        _record(
            ResourceKind.EBS_SNAPSHOT,
            s["SnapshotId"],
            account,
            region,
            s["State"],
            s,
            tag_dict(s.get("Tags")),
            s.get("StartTime"),
        )
        for page in pages(
            client_for("ec2"), "describe_snapshots", OwnerIds=["self"], MaxResults=1000
        )
        for s in page["Snapshots"]
        # Guard: some endpoints (moto) ignore OwnerIds and return public snapshots too.
        if s.get("OwnerId", account) == account
    ]


def describe_images(client_for: Callable[[str], Any], account: str, region: str) -> list[Resource]:
    out = []
    for page in pages(client_for("ec2"), "describe_images", Owners=["self"]):
        for image in page["Images"]:
            created = image.get("CreationDate")
            created_at = (
                dt.datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None
            )
            out.append(
                _record(
                    ResourceKind.AMI,
                    image["ImageId"],
                    account,
                    region,
                    image.get("State", "available"),
                    image,
                    tag_dict(image.get("Tags")),
                    created_at,
                )
            )
    return out


def describe_addresses(
    client_for: Callable[[str], Any], account: str, region: str
) -> list[Resource]:
    answer = call(client_for("ec2").describe_addresses)
    return [
        _record(
            ResourceKind.ELASTIC_IP,
            a.get("AllocationId") or a["PublicIp"],
            account,
            region,
            "associated" if a.get("AssociationId") else "unassociated",
            a,
            tag_dict(a.get("Tags")),
            None,
        )
        for a in answer["Addresses"]
    ]


def describe_load_balancers(
    client_for: Callable[[str], Any], account: str, region: str
) -> list[Resource]:
    elbv2 = client_for("elbv2")
    lbs = [
        lb
        for page in pages(elbv2, "describe_load_balancers", PageSize=400)
        for lb in page["LoadBalancers"]
    ]
    tags: dict[str, dict[str, str]] = {}
    arns = [lb["LoadBalancerArn"] for lb in lbs]
    for i in range(0, len(arns), 20):  # DescribeTags takes at most 20 ARNs
        answer = call(elbv2.describe_tags, ResourceArns=arns[i : i + 20])
        for desc in answer["TagDescriptions"]:
            tags[desc["ResourceArn"]] = required_tags(desc, "Tags", desc["ResourceArn"])
    missing = [arn for arn in arns if arn not in tags]
    if missing:  # a 200 answer that skipped an ARN: its tags are unknown, not empty
        raise UnknownTagsError(f"DescribeTags left out {', '.join(missing)}: tags are unknown")
    return [
        _record(
            ResourceKind.LOAD_BALANCER,
            lb["LoadBalancerArn"],
            account,
            region,
            lb.get("State", {}).get("Code", "active"),
            lb,
            tags[lb["LoadBalancerArn"]],
            lb.get("CreatedTime"),
        )
        for lb in lbs
    ]


def describe_db_instances(
    client_for: Callable[[str], Any], account: str, region: str
) -> list[Resource]:
    return [
        _record(
            ResourceKind.RDS_INSTANCE,
            db["DBInstanceIdentifier"],
            account,
            region,
            db["DBInstanceStatus"],
            db,
            required_tags(db, "TagList", db["DBInstanceIdentifier"]),
            db.get("InstanceCreateTime"),
            drop=("TagList",),
        )
        for page in pages(client_for("rds"), "describe_db_instances", MaxRecords=100)
        for db in page["DBInstances"]
    ]


DESCRIBERS: dict[ResourceKind, Describer] = {
    ResourceKind.EC2_INSTANCE: describe_instances,
    ResourceKind.EBS_VOLUME: describe_volumes,
    ResourceKind.EBS_SNAPSHOT: describe_snapshots,
    ResourceKind.AMI: describe_images,
    ResourceKind.ELASTIC_IP: describe_addresses,
    ResourceKind.LOAD_BALANCER: describe_load_balancers,
    ResourceKind.RDS_INSTANCE: describe_db_instances,
}
