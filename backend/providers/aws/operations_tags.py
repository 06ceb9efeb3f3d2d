"""Mark (add a tag) and untag, on every kind; each undoes the other back to the pre-state.

EC2-family kinds use CreateTags/DeleteTags, load balancers AddTags/RemoveTags, RDS
AddTagsToResource/RemoveTagsFromResource (by the database's ARN).
"""

from __future__ import annotations

from backend.domain.resources import Resource, ResourceKind
from backend.providers.aws.operations_base import (
    BaseOperation,
    OperationContext,
    Params,
    VerificationFailed,
    act,
    fresh,
    require_param,
    undo_needs,
)

K = ResourceKind


def _rds_arn(ctx: OperationContext, resource: Resource) -> str:
    arn = resource.attributes.get("DBInstanceArn")
    if arn:
        return str(arn)
    return f"arn:aws:rds:{ctx.region}:{ctx.account_id}:db:{resource.resource_id}"


def set_tag(ctx: OperationContext, resource: Resource, key: str, value: str) -> None:
    tags = [{"Key": key, "Value": value}]
    if resource.kind is K.LOAD_BALANCER:
        act(ctx, "elbv2", "add_tags", ResourceArns=[resource.resource_id], Tags=tags)
    elif resource.kind is K.RDS_INSTANCE:
        act(ctx, "rds", "add_tags_to_resource", ResourceName=_rds_arn(ctx, resource), Tags=tags)
    else:
        act(ctx, "ec2", "create_tags", Resources=[_ec2_id(resource)], Tags=tags)


def remove_tag(ctx: OperationContext, resource: Resource, key: str) -> None:
    if resource.kind is K.LOAD_BALANCER:
        act(ctx, "elbv2", "remove_tags", ResourceArns=[resource.resource_id], TagKeys=[key])
    elif resource.kind is K.RDS_INSTANCE:
        name = _rds_arn(ctx, resource)
        act(ctx, "rds", "remove_tags_from_resource", ResourceName=name, TagKeys=[key])
    else:
        act(ctx, "ec2", "delete_tags", Resources=[_ec2_id(resource)], Tags=[{"Key": key}])


def _ec2_id(resource: Resource) -> str:
    if resource.kind is K.ELASTIC_IP and not resource.resource_id.startswith("eipalloc-"):
        raise ValueError(f"{resource.resource_id}: an EC2-Classic address has no tags")
    return resource.resource_id


class MarkResource(BaseOperation):
    action = "mark"

    def execute(self, ctx: OperationContext, resource: Resource, params: Params) -> None:
        key = str(require_param(params, "key", self.action))
        value = str(params.get("value") or "")
        now = fresh(ctx, self.kind, resource.resource_id)
        if now.tags.get(key) != value:
            set_tag(ctx, now, key, value)

    def verify(self, ctx: OperationContext, resource_id: str, params: Params) -> Resource | None:
        key = str(require_param(params, "key", self.action))
        value = str(params.get("value") or "")
        now = fresh(ctx, self.kind, resource_id)
        if now.tags.get(key) != value:
            raise VerificationFailed(
                f"{resource_id} has {key}={now.tags.get(key)!r}, not {value!r}"
            )
        return now

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str:
        key = str(require_param(params, "key", self.action))
        now = _fresh_for_undo(ctx, self.kind, pre_state.resource_id)
        if key in pre_state.tags:  # it was there with another value: put that back
            if now.tags.get(key) != pre_state.tags[key]:
                set_tag(ctx, now, key, pre_state.tags[key])
            return f"restored tag {key}={pre_state.tags[key]} on {pre_state.resource_id}"
        if key in now.tags:
            remove_tag(ctx, now, key)
        return f"removed tag {key} from {pre_state.resource_id}"


class UntagResource(BaseOperation):
    action = "untag"

    def execute(self, ctx: OperationContext, resource: Resource, params: Params) -> None:
        key = str(require_param(params, "key", self.action))
        now = fresh(ctx, self.kind, resource.resource_id)
        if key in now.tags:
            remove_tag(ctx, now, key)

    def verify(self, ctx: OperationContext, resource_id: str, params: Params) -> Resource | None:
        key = str(require_param(params, "key", self.action))
        now = fresh(ctx, self.kind, resource_id)
        if key in now.tags:
            raise VerificationFailed(f"{resource_id} still has the tag {key}")
        return now

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str:
        key = str(require_param(params, "key", self.action))
        if key not in pre_state.tags:
            return f"{pre_state.resource_id} had no tag {key}; nothing to put back"
        now = _fresh_for_undo(ctx, self.kind, pre_state.resource_id)
        if now.tags.get(key) != pre_state.tags[key]:
            set_tag(ctx, now, key, pre_state.tags[key])
        return f"put back tag {key}={pre_state.tags[key]} on {pre_state.resource_id}"


def _fresh_for_undo(ctx: OperationContext, kind: ResourceKind, resource_id: str) -> Resource:
    with undo_needs(kind, resource_id):
        return fresh(ctx, kind, resource_id)
