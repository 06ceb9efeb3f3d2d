"""The AWS operations, one per (action, kind) of the action registry, and their lookup.

Each one describes the resource afresh, takes its backup, executes, verifies the post-state
and undoes (see `Operation`). The undo-only actions of the registry (restore-from-ami,
restore-volume, recreate-load-balancer) are the `undo` of terminate and delete.
"""

from __future__ import annotations

from backend.domain.policy.actions import ACTIONS, ALIASES, EC2_FAMILY
from backend.domain.resources import ResourceKind
from backend.providers.aws.operations_base import (
    BackupFailed,
    CannotUndo,
    Operation,
    OperationContext,
    Params,
    ResourceGone,
    VerificationFailed,
)
from backend.providers.aws.operations_ec2 import (
    ResizeInstance,
    StartInstance,
    StopInstance,
    TerminateInstance,
)
from backend.providers.aws.operations_elb import DeleteLoadBalancer
from backend.providers.aws.operations_network import ReleaseAddress
from backend.providers.aws.operations_rds import StartDatabase, StopDatabase
from backend.providers.aws.operations_storage import (
    DeleteSnapshot,
    DeleteVolume,
    DeregisterImage,
    ModifyVolume,
)
from backend.providers.aws.operations_tags import MarkResource, UntagResource

__all__ = [
    "OPERATIONS",
    "BackupFailed",
    "CannotUndo",
    "Operation",
    "OperationContext",
    "Params",
    "ResourceGone",
    "VerificationFailed",
    "operation_for",
]

K = ResourceKind
TAGGABLE = (*EC2_FAMILY, K.LOAD_BALANCER, K.RDS_INSTANCE)


def _build() -> dict[tuple[str, ResourceKind], Operation]:
    operations: list[Operation] = [
        StopInstance(K.EC2_INSTANCE),
        StartInstance(K.EC2_INSTANCE),
        ResizeInstance(K.EC2_INSTANCE),
        TerminateInstance(K.EC2_INSTANCE),
        DeleteVolume(K.EBS_VOLUME),
        ModifyVolume(K.EBS_VOLUME),
        DeleteSnapshot(K.EBS_SNAPSHOT),
        DeregisterImage(K.AMI),
        ReleaseAddress(K.ELASTIC_IP),
        DeleteLoadBalancer(K.LOAD_BALANCER),
        StopDatabase(K.RDS_INSTANCE),
        StartDatabase(K.RDS_INSTANCE),
        *(MarkResource(kind) for kind in TAGGABLE),
        *(UntagResource(kind) for kind in TAGGABLE),
    ]
    return {(op.action, op.kind): op for op in operations}


OPERATIONS: dict[tuple[str, ResourceKind], Operation] = _build()


def operation_for(action: str, kind: ResourceKind) -> Operation:
    """The operation for an action (or its alias) on a kind; KeyError saying why not."""
    name = ALIASES.get(action, action)
    found = OPERATIONS.get((name, kind))
    if found is not None:
        return found
    action_type = ACTIONS.get(name)
    if action_type is None:
        raise KeyError(f"unknown action {action!r}")
    if not action_type.changes:
        raise KeyError(f"action {name!r} changes nothing in AWS; it has no operation")
    if action_type.undo_only:
        of = sorted(a.name for a in ACTIONS.values() if (r := a.rule(kind)) and r.inverse == name)
        raise KeyError(
            f"action {name!r} is an undo step: call undo() on the operation of "
            f"{' or '.join(of) or 'its forward action'} for {kind.value!r}"
        )
    offered = sorted(a for a, k in OPERATIONS if k is kind)
    raise KeyError(
        f"no AWS operation for action {name!r} on {kind.value!r}; "
        f"for {kind.value!r} there are: {', '.join(offered)}"
    )
