"""Elastic IPs: release, and the best-effort inverse (ask AWS for the same address back)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from backend.domain.resources import Resource, ResourceKind
from backend.providers.aws.operations_base import (
    BaseOperation,
    CannotUndo,
    OperationContext,
    Params,
    await_gone,
    create,
    fresh_or_none,
    is_gone,
    read,
    remove,
    tag_specs,
    user_tags,
)
from backend.providers.aws.retry import describe_error

EIP = ResourceKind.ELASTIC_IP


class ReleaseAddress(BaseOperation):
    action = "release"

    def execute(self, ctx: OperationContext, resource: Resource, params: Params) -> None:
        rid = resource.resource_id
        if fresh_or_none(ctx, EIP, rid) is None:
            return
        # AWS refuses to release an associated VPC address; that error propagates
        where = {"AllocationId": rid} if rid.startswith("eipalloc-") else {"PublicIp": rid}
        remove(ctx, "ec2", "release_address", **where)

    def verify(self, ctx: OperationContext, resource_id: str, params: Params) -> Resource | None:
        await_gone(ctx, EIP, resource_id)
        return None

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str:
        ip = pre_state.attributes.get("PublicIp")
        if not ip:
            raise CannotUndo(f"the pre-state of {pre_state.resource_id} has no PublicIp")
        held = _held(ctx, str(ip))
        if held is not None:  # a retried undo, or nobody released it after all
            return f"{ip} is allocated in this account as {held}"
        kwargs: dict[str, Any] = {
            "Domain": "vpc",
            "Address": ip,
            "TagSpecifications": tag_specs("elastic-ip", user_tags(pre_state.tags)),
        }
        if pre_state.attributes.get("NetworkBorderGroup"):
            kwargs["NetworkBorderGroup"] = pre_state.attributes["NetworkBorderGroup"]
        try:
            got = create(ctx, "ec2", "allocate_address", **kwargs)
        except ClientError as exc:
            # AWS gives a released address back only if nobody else took it meanwhile
            raise CannotUndo(f"AWS would not give back {ip}: {describe_error(exc)}") from exc
        return (
            f"allocated {ip} again as {got['AllocationId']} (a NEW allocation id, "
            f"not associated; was {pre_state.resource_id})"
        )


def _held(ctx: OperationContext, ip: str) -> str | None:
    try:
        answer = read(ctx, "ec2", "describe_addresses", PublicIps=[ip])
    except ClientError as exc:
        if is_gone(exc):
            return None
        raise
    for address in answer["Addresses"]:
        return str(address.get("AllocationId") or address["PublicIp"])
    return None
