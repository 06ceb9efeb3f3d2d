"""EBS volumes, snapshots and AMIs: delete (with a snapshot first), modify, deregister."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from backend.domain.pricing import gp2_baseline_on_gp3
from backend.domain.resources import Resource, ResourceKind
from backend.providers.aws.operations_base import (
    KEY_TAG,
    RESTORED_FROM_TAG,
    SOURCE_VOLUME_TAG,
    BackupFailed,
    BaseOperation,
    CannotUndo,
    OperationContext,
    Params,
    ResourceGone,
    VerificationFailed,
    WaitTimeoutError,
    act,
    await_gone,
    client_token,
    create,
    fresh,
    fresh_or_none,
    key_value,
    making_from,
    read,
    remove,
    require_param,
    tag_filters,
    tag_specs,
    undo_needs,
    user_tags,
    wait_until,
)
from backend.providers.aws.retry import describe_error, error_code

EBS = ResourceKind.EBS_VOLUME
SNAPSHOT = ResourceKind.EBS_SNAPSHOT
AMI = ResourceKind.AMI
_IOPS_TYPES = frozenset({"io1", "io2", "gp3"})  # the types whose IOPS one sets
_THROUGHPUT_TYPES = frozenset({"gp3"})
# AWS allows one modification per volume every 6 hours; these say "not now"
_MODIFY_LATER_CODES = frozenset({"VolumeModificationRateExceeded", "IncorrectModificationState"})


class DeleteVolume(BaseOperation):
    action = "delete"

    def backup(self, ctx: OperationContext, resource: Resource) -> str | None:
        vid = resource.resource_id
        marks = {KEY_TAG: key_value(ctx), SOURCE_VOLUME_TAG: vid}
        found = read(
            ctx, "ec2", "describe_snapshots", OwnerIds=["self"], Filters=tag_filters(marks)
        )["Snapshots"]
        usable = sorted(
            (s for s in found if s.get("State") != "error"), key=lambda s: str(s["StartTime"])
        )
        if usable:
            snapshot_id = str(usable[0]["SnapshotId"])
        else:
            with making_from(EBS, vid):
                made = create(
                    ctx,
                    "ec2",
                    "create_snapshot",
                    VolumeId=vid,
                    Description=f"finops: {vid} before delete",
                    # the volume's own tags, so the snapshot is found and billed like it
                    TagSpecifications=tag_specs("snapshot", {**user_tags(resource.tags), **marks}),
                )
            snapshot_id = str(made["SnapshotId"])
        _await_snapshot(ctx, snapshot_id)
        return snapshot_id

    def execute(self, ctx: OperationContext, resource: Resource, params: Params) -> None:
        if fresh_or_none(ctx, EBS, resource.resource_id) is not None:
            remove(ctx, "ec2", "delete_volume", VolumeId=resource.resource_id)

    def verify(self, ctx: OperationContext, resource_id: str, params: Params) -> Resource | None:
        await_gone(ctx, EBS, resource_id, "deleting")
        return None

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str:
        old = pre_state.resource_id
        mark = {KEY_TAG: key_value(ctx, "undo")}
        existing = read(ctx, "ec2", "describe_volumes", Filters=tag_filters(mark))["Volumes"]
        if existing:
            return f"already restored {old} from {backup_ref} as {existing[0]['VolumeId']}"
        # A delete that failed or was interrupted may never have been made: a restored
        # copy beside the original would be a second volume to pay for, and to confuse.
        # One still `deleting` was made: wait for it to go, then restore (otherwise the
        # rollback would end, final, with nothing restored a moment later).
        still = fresh_or_none(ctx, EBS, old)
        if still is not None and still.state == "deleting":
            await_gone(ctx, EBS, old, "deleting")
        elif still is not None:
            return f"{old} was never deleted: nothing to restore"
        if not backup_ref or not backup_ref.startswith("snap-"):
            raise CannotUndo(f"no snapshot was taken of {old}; it cannot be restored")
        if fresh_or_none(ctx, SNAPSHOT, backup_ref) is None:
            raise CannotUndo(f"the backup snapshot {backup_ref} of {old} is gone")
        attrs = pre_state.attributes
        missing = [k for k in ("VolumeType", "Size", "AvailabilityZone") if not attrs.get(k)]
        if missing:  # a guess (gp3, say, for an io2) would restore another volume
            raise CannotUndo(
                f"the pre-state of {old} has no {', '.join(missing)}: it cannot be restored "
                f"as it was (its snapshot {backup_ref} is kept)"
            )
        volume_type = str(attrs["VolumeType"])
        tags = {**user_tags(pre_state.tags), RESTORED_FROM_TAG: old, **mark}
        kwargs: dict[str, Any] = {
            "SnapshotId": backup_ref,
            "AvailabilityZone": attrs.get("AvailabilityZone"),
            "VolumeType": volume_type,
            "Size": attrs.get("Size"),
            "ClientToken": client_token(ctx, "undo"),
            "TagSpecifications": tag_specs("volume", tags),
        }
        kwargs.update(_performance(volume_type, attrs))
        if attrs.get("MultiAttachEnabled"):
            kwargs["MultiAttachEnabled"] = True
        try:
            made = create(ctx, "ec2", "create_volume", **kwargs)
        except ClientError as exc:
            raise CannotUndo(f"AWS would not restore {backup_ref}: {describe_error(exc)}") from exc
        new_id = str(made["VolumeId"])
        wait_until(ctx, f"volume {new_id}", lambda: _available(ctx, new_id))
        names = ", ".join(sorted(user_tags(pre_state.tags))) or "none"
        return (
            f"restored {old} from {backup_ref} as {new_id} (a NEW volume id, not attached): "
            f"{volume_type}, {attrs.get('Size')} GiB in {attrs.get('AvailabilityZone')}, "
            f"with tags {names}"
        )


def _available(ctx: OperationContext, volume_id: str) -> bool | None:
    state = fresh(ctx, EBS, volume_id).state
    if state in ("available", "in-use"):
        return True
    if state == "creating":
        return None
    raise CannotUndo(f"the restored volume {volume_id} is {state}")


def _performance(volume_type: str, attrs: Any) -> dict[str, Any]:
    """IOPS and throughput are accepted only for the types that have them."""
    out: dict[str, Any] = {}
    if volume_type in _IOPS_TYPES and attrs.get("Iops"):
        out["Iops"] = int(attrs["Iops"])
    if volume_type in _THROUGHPUT_TYPES and attrs.get("Throughput"):
        out["Throughput"] = int(attrs["Throughput"])
    return out


def _await_snapshot(ctx: OperationContext, snapshot_id: str) -> None:
    def check() -> bool | None:
        try:
            state = fresh(ctx, SNAPSHOT, snapshot_id).state
        except ResourceGone as exc:
            raise BackupFailed(f"snapshot {snapshot_id} vanished") from exc
        if state == "completed":
            return True
        if state == "pending":
            return None
        raise BackupFailed(f"snapshot {snapshot_id} is {state}")

    try:
        wait_until(ctx, f"snapshot {snapshot_id}", check)
    except WaitTimeoutError as exc:
        raise BackupFailed(str(exc)) from exc


def _matches(volume: Resource, target: Params) -> bool:
    attrs = volume.attributes
    if attrs.get("VolumeType") != target["volume_type"]:
        return False
    return all(
        target.get(name) is None or attrs.get(field) == target[name]
        for name, field in (("iops", "Iops"), ("throughput", "Throughput"))
    )


def _in_flight(ctx: OperationContext, volume_id: str, target: Params) -> bool:
    """A modification to the same target already under way (AWS: 'modifying' for a while)."""
    answer = read(ctx, "ec2", "describe_volumes_modifications", VolumeIds=[volume_id])
    for mod in answer.get("VolumesModifications", ()):
        if mod.get("ModificationState") not in ("modifying", "optimizing"):
            continue
        if mod.get("TargetVolumeType") != target["volume_type"]:
            continue
        if target.get("iops") is not None and mod.get("TargetIops") != target["iops"]:
            continue
        if target.get("throughput") is not None and mod.get("TargetThroughput") != target.get(
            "throughput"
        ):
            continue
        return True
    return False


def _modify(ctx: OperationContext, volume_id: str, target: Params) -> bool:
    """Apply the target unless it is already there or on its way; True if a call was made."""
    volume = fresh(ctx, EBS, volume_id)
    if _matches(volume, target) or _in_flight(ctx, volume_id, target):
        return False
    kwargs: dict[str, Any] = {"VolumeId": volume_id, "VolumeType": target["volume_type"]}
    if target.get("iops") is not None:
        kwargs["Iops"] = int(target["iops"])
    if target.get("throughput") is not None:
        kwargs["Throughput"] = int(target["throughput"])
    try:
        act(ctx, "ec2", "modify_volume", **kwargs)
    except ClientError as exc:
        # a retried call whose first try went through is refused as "too soon": fine
        if error_code(exc) not in _MODIFY_LATER_CODES or not (
            _in_flight(ctx, volume_id, target) or _matches(fresh(ctx, EBS, volume_id), target)
        ):
            raise
    return True


def _target(params: Params, action: str) -> dict[str, Any]:
    return {
        "volume_type": str(require_param(params, "volume_type", action)),
        "iops": params.get("iops"),
        "throughput": params.get("throughput"),
    }


class ModifyVolume(BaseOperation):
    action = "modify-volume"

    def backup(self, ctx: OperationContext, resource: Resource) -> str | None:
        keep = ("VolumeType", "Iops", "Throughput")
        return "config:" + json.dumps({k: resource.attributes.get(k) for k in keep})

    def execute(self, ctx: OperationContext, resource: Resource, params: Params) -> None:
        target = _target(params, self.action)
        attrs = resource.attributes
        if target["volume_type"] == "gp3" and attrs.get("VolumeType") == "gp2":
            # gp3 without numbers gets 3,000 IOPS and 125 MB/s: less than a big gp2 has
            iops, mbps = gp2_baseline_on_gp3(attrs.get("Size"))
            if target["iops"] is None and iops > 3000:
                target["iops"] = iops
            if target["throughput"] is None and mbps > 125:
                target["throughput"] = mbps
        _modify(ctx, resource.resource_id, target)

    def verify(self, ctx: OperationContext, resource_id: str, params: Params) -> Resource | None:
        target = _target(params, self.action)

        def check() -> Resource | None:
            volume = fresh(ctx, EBS, resource_id)
            if _matches(volume, target):
                return volume
            if _in_flight(ctx, resource_id, target):
                return None
            raise VerificationFailed(
                f"{resource_id} is {volume.attributes.get('VolumeType')}, "
                f"expected {target['volume_type']} and no modification is under way"
            )

        try:
            return wait_until(ctx, f"volume {resource_id} to change", check)
        except WaitTimeoutError as exc:
            raise VerificationFailed(str(exc)) from exc

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str:
        attrs = pre_state.attributes
        old_type = attrs.get("VolumeType")
        if not old_type:
            raise CannotUndo(f"the pre-state of {pre_state.resource_id} has no VolumeType")
        perf = _performance(str(old_type), attrs)
        target = {
            "volume_type": old_type,
            "iops": perf.get("Iops"),
            "throughput": perf.get("Throughput"),
        }
        set_by_us = {**_target(params, self.action), "iops": None, "throughput": None}
        with undo_needs(EBS, pre_state.resource_id):
            now = fresh(ctx, EBS, pre_state.resource_id)
        if not (_matches(now, set_by_us) or _matches(now, target)):
            # someone changed it since (to io2, say): undoing would overwrite their change
            raise CannotUndo(
                f"{pre_state.resource_id} is {now.attributes.get('VolumeType')} now, not the "
                f"{set_by_us['volume_type']} this action set: changed since; left as it is"
            )
        tuned = _tuned_since(ctx.left_as, now)
        if tuned and not _matches(now, target):
            # its owner tuned the new type (more IOPS, say): going back would drop that
            raise CannotUndo(
                f"{pre_state.resource_id} has {tuned} now, not what this action left: changed "
                "since; left as it is"
            )
        try:
            with undo_needs(EBS, pre_state.resource_id):
                changed = _modify(ctx, pre_state.resource_id, target)
        except ClientError as exc:
            if error_code(exc) in _MODIFY_LATER_CODES:
                raise CannotUndo(
                    f"AWS refuses to modify {pre_state.resource_id} again yet "
                    f"({describe_error(exc)}); retry 6 hours after the change"
                ) from exc
            raise
        detail = ", ".join(f"{k} {v}" for k, v in perf.items())
        done = "modified" if changed else "already"
        return f"{done} {pre_state.resource_id} back to {old_type}" + (
            f" ({detail})" if detail else ""
        )


def _tuned_since(left_as: Resource | None, now: Resource) -> str:
    """The IOPS and throughput that differ from what the action left (recorded after it),
    as "Iops 12000, Throughput 750"; "" when nothing differs or nothing was recorded."""
    if left_as is None:
        return ""
    changed = [
        f"{key} {now.attributes.get(key)}"
        for key in ("Iops", "Throughput")
        if now.attributes.get(key) != left_as.attributes.get(key)
    ]
    return ", ".join(changed)


class DeleteSnapshot(BaseOperation):
    action = "delete"

    def execute(self, ctx: OperationContext, resource: Resource, params: Params) -> None:
        remove(ctx, "ec2", "delete_snapshot", SnapshotId=resource.resource_id)

    def verify(self, ctx: OperationContext, resource_id: str, params: Params) -> Resource | None:
        await_gone(ctx, SNAPSHOT, resource_id)
        return None

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str:
        if fresh_or_none(ctx, SNAPSHOT, pre_state.resource_id) is not None:
            return f"{pre_state.resource_id} was never deleted: nothing to restore"
        raise CannotUndo(f"a deleted EBS snapshot ({pre_state.resource_id}) cannot be recovered")


class DeregisterImage(BaseOperation):
    """Its snapshots stay behind; the orphaned-snapshot policies find them."""

    action = "delete"

    def execute(self, ctx: OperationContext, resource: Resource, params: Params) -> None:
        if fresh_or_none(ctx, AMI, resource.resource_id) is not None:
            remove(ctx, "ec2", "deregister_image", ImageId=resource.resource_id)

    def verify(self, ctx: OperationContext, resource_id: str, params: Params) -> Resource | None:
        await_gone(ctx, AMI, resource_id)
        return None

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str:
        if fresh_or_none(ctx, AMI, pre_state.resource_id) is not None:
            return f"{pre_state.resource_id} was never deregistered: nothing to restore"
        raise CannotUndo(
            f"a deregistered image ({pre_state.resource_id}) cannot be registered again as "
            "the same id"
        )
