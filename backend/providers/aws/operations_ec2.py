"""EC2 instances: stop, start, resize, terminate (with an AMI first) and their inverses."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from backend.domain.resources import Resource, ResourceKind
from backend.providers.aws.operations_base import (
    KEY_TAG,
    RESTORED_FROM_TAG,
    SOURCE_INSTANCE_TAG,
    BackupFailed,
    BaseOperation,
    CannotUndo,
    OperationContext,
    Params,
    VerificationFailed,
    WaitTimeoutError,
    act,
    await_gone,
    client_token,
    create,
    fresh,
    fresh_or_none,
    is_gone,
    key_value,
    making_from,
    read,
    remove,
    require_param,
    settle,
    short_digest,
    tag_filters,
    tag_list,
    tag_specs,
    undo_needs,
    user_tags,
    wait_until,
)
from backend.providers.aws.retry import describe_error, error_code

EC2 = ResourceKind.EC2_INSTANCE
_UP = frozenset({"running", "pending"})
_DOWN = frozenset({"stopped", "stopping"})
_LEAVING = frozenset({"shutting-down", "terminated"})


def _start(ctx: OperationContext, instance_id: str) -> None:
    if fresh(ctx, EC2, instance_id).state not in _UP:
        act(ctx, "ec2", "start_instances", InstanceIds=[instance_id])


def _stop(ctx: OperationContext, instance_id: str) -> None:
    if fresh(ctx, EC2, instance_id).state not in _DOWN:
        act(ctx, "ec2", "stop_instances", InstanceIds=[instance_id])


def _running(ctx: OperationContext, instance_id: str) -> Resource:
    return settle(ctx, EC2, instance_id, frozenset({"running"}), frozenset({"pending"}))


def _stopped(ctx: OperationContext, instance_id: str) -> Resource:
    return settle(ctx, EC2, instance_id, frozenset({"stopped"}), frozenset({"stopping"}))


class StopInstance(BaseOperation):
    action = "stop"

    def execute(self, ctx: OperationContext, resource: Resource, params: Params) -> None:
        _stop(ctx, resource.resource_id)

    def verify(self, ctx: OperationContext, resource_id: str, params: Params) -> Resource | None:
        return _stopped(ctx, resource_id)

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str:
        with undo_needs(EC2, pre_state.resource_id):
            _start(ctx, pre_state.resource_id)
            _running(ctx, pre_state.resource_id)
        return f"started {pre_state.resource_id}"


class StartInstance(BaseOperation):
    action = "start"

    def execute(self, ctx: OperationContext, resource: Resource, params: Params) -> None:
        _start(ctx, resource.resource_id)

    def verify(self, ctx: OperationContext, resource_id: str, params: Params) -> Resource | None:
        return _running(ctx, resource_id)

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str:
        with undo_needs(EC2, pre_state.resource_id):
            _stop(ctx, pre_state.resource_id)
            _stopped(ctx, pre_state.resource_id)
        return f"stopped {pre_state.resource_id}"


def _resize(ctx: OperationContext, instance_id: str, new_type: str, run_after: bool) -> bool:
    """Stop if needed, change the type, start again if it ran before; True if it changed.

    A retried step resumes: a type already changed is left alone, a start still owed is made.
    """
    now = fresh(ctx, EC2, instance_id)
    changed = False
    if now.attributes.get("InstanceType") != new_type:
        if now.state not in _DOWN:
            act(ctx, "ec2", "stop_instances", InstanceIds=[instance_id])
        _stopped(ctx, instance_id)
        try:
            act(
                ctx,
                "ec2",
                "modify_instance_attribute",
                InstanceId=instance_id,
                InstanceType={"Value": new_type},
            )
        except Exception:
            # Refused (capacity, permissions, a type the AMI cannot run): the instance was
            # stopped only for the change, so it goes back up before the failure is told.
            if run_after:
                _start(ctx, instance_id)
                _running(ctx, instance_id)
            raise
        changed = True
    if run_after:
        _start(ctx, instance_id)
    return changed


class ResizeInstance(BaseOperation):
    action = "resize"

    def backup(self, ctx: OperationContext, resource: Resource) -> str | None:
        # the previous type; the pre-state in the action record holds it too
        return "config:" + json.dumps({"InstanceType": resource.attributes.get("InstanceType")})

    def execute(self, ctx: OperationContext, resource: Resource, params: Params) -> None:
        new_type = str(require_param(params, "instance_type", self.action))
        _resize(ctx, resource.resource_id, new_type, run_after=resource.state in _UP)

    def verify(self, ctx: OperationContext, resource_id: str, params: Params) -> Resource | None:
        new_type = str(require_param(params, "instance_type", self.action))
        now = settle(
            ctx, EC2, resource_id, frozenset({"running", "stopped"}), frozenset({"pending"})
        )
        if now.attributes.get("InstanceType") != new_type:
            found = now.attributes.get("InstanceType")
            raise VerificationFailed(f"{resource_id} is {found}, expected {new_type}")
        return now

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str:
        old_type = pre_state.attributes.get("InstanceType")
        if not old_type:
            raise CannotUndo(f"the pre-state of {pre_state.resource_id} has no InstanceType")
        ours = params.get("instance_type")
        with undo_needs(EC2, pre_state.resource_id):
            now = fresh(ctx, EC2, pre_state.resource_id)
        current = now.attributes.get("InstanceType")
        if current not in (old_type, ours):
            # resized again by someone since: undoing would stop it and overwrite that
            raise CannotUndo(
                f"{pre_state.resource_id} is {current} now, not the {ours} this action set: "
                "changed since; left as it is"
            )
        was_up = pre_state.state in _UP
        # Left running by the action and stopped now: stopped since, by its owner or an
        # off-hours schedule; the type goes back, the instance stays as it was put.
        stopped_since = ctx.left_as is not None and ctx.left_as.state in _UP and now.state in _DOWN
        start = was_up and not stopped_since
        with undo_needs(EC2, pre_state.resource_id):
            changed = _resize(ctx, pre_state.resource_id, str(old_type), run_after=start)
        if start:
            _running(ctx, pre_state.resource_id)
        started = " and started it" if start else ""
        if stopped_since:
            started = "; left stopped, as it was stopped since the resize"
        if not changed:  # the resize was refused, or never made
            return f"{pre_state.resource_id} was still {old_type}: type unchanged{started}"
        return f"resized {pre_state.resource_id} back to {old_type}{started}"


class TerminateInstance(BaseOperation):
    action = "terminate"

    def backup(self, ctx: OperationContext, resource: Resource) -> str | None:
        iid = resource.resource_id
        marks = {KEY_TAG: key_value(ctx), SOURCE_INSTANCE_TAG: iid}
        image_id = _find_image(ctx, marks)
        if image_id is None:
            fresh(ctx, EC2, iid)  # a terminated instance can still be imaged on moto
            name = f"finops-backup-{iid}-{short_digest(ctx)}"
            try:
                with making_from(EC2, iid):
                    made = create(
                        ctx,
                        "ec2",
                        "create_image",
                        InstanceId=iid,
                        Name=name,
                        Description=f"finops: {iid} before terminate",
                        # the approved action is a termination, not a reboot; EBS snapshots
                        # are crash-consistent
                        NoReboot=True,
                        # snapshots are tagged once the image is there: moto refuses
                        # snapshot tag specifications in CreateImage
                        TagSpecifications=tag_specs("image", marks),
                    )
                image_id = str(made["ImageId"])
            except ClientError as exc:
                # AMI names are unique: a first try that made it and lost the answer
                if error_code(exc) != "InvalidAMIName.Duplicate":
                    raise
                image_id = _find_image(ctx, {}, name=name)
                if image_id is None:
                    raise
        snapshots = _await_image(ctx, image_id)
        if snapshots:  # so that snapshot policies see whose backup they are
            act(ctx, "ec2", "create_tags", Resources=snapshots, Tags=tag_list(marks))
        return image_id

    def execute(self, ctx: OperationContext, resource: Resource, params: Params) -> None:
        now = fresh_or_none(ctx, EC2, resource.resource_id)
        if now is None or now.state in _LEAVING:
            return
        remove(ctx, "ec2", "terminate_instances", InstanceIds=[resource.resource_id])

    def verify(self, ctx: OperationContext, resource_id: str, params: Params) -> Resource | None:
        await_gone(ctx, EC2, resource_id, "shutting-down")
        return None

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str:
        old = pre_state.resource_id
        mark = {KEY_TAG: key_value(ctx, "undo")}
        existing = _find_instance(ctx, mark)
        if existing is not None:
            # A try that launched it may have ended before the stop it owed (refused, or
            # the emergency stop): this one finishes it.
            # ... or before what RunInstances cannot set (which a pending instance refuses).
            if fresh(ctx, EC2, existing).state == "pending":
                _running(ctx, existing)
            finished = _finish_relaunch(ctx, existing, pre_state)
            return f"already relaunched {old} as {existing} (a new instance id){finished}"
        # A terminate that failed or was interrupted may never have been made: launching
        # the image then would run the workload twice.
        still = fresh_or_none(ctx, EC2, old)
        if still is not None and still.state not in _LEAVING:
            return f"{old} was never terminated (it is {still.state}): nothing to restore"
        if not backup_ref or not backup_ref.startswith("ami-"):
            raise CannotUndo(f"no image was taken of {old}; it cannot be launched again")
        try:
            read(ctx, "ec2", "describe_images", ImageIds=[backup_ref])
        except ClientError as exc:
            if is_gone(exc):
                raise CannotUndo(f"the backup image {backup_ref} of {old} is gone") from exc
            raise
        attrs = pre_state.attributes
        tags = {**user_tags(pre_state.tags), RESTORED_FROM_TAG: old, **mark}
        kwargs: dict[str, Any] = {
            "ImageId": backup_ref,
            "InstanceType": attrs.get("InstanceType"),
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": client_token(ctx, "undo"),
            "TagSpecifications": tag_specs("instance", tags),
        }
        kwargs |= launch_settings(attrs)
        try:
            launched = create(ctx, "ec2", "run_instances", **kwargs)
        except ClientError as exc:
            if error_code(exc) in _NO_CAPACITY_NOW:
                raise  # AWS may have room later: a failed rollback, to run again
            raise CannotUndo(f"AWS would not launch {backup_ref}: {describe_error(exc)}") from exc
        new_id = str(launched["Instances"][0]["InstanceId"])
        _running(ctx, new_id)
        finished = _finish_relaunch(ctx, new_id, pre_state)
        return (
            f"launched {new_id} from {backup_ref} to replace {old}: a NEW instance id "
            f"(new private IP too), type {attrs.get('InstanceType')}, "
            f"subnet {attrs.get('SubnetId')}, {len(user_tags(pre_state.tags))} tags{finished}"
        )


# What DescribeInstances reports of how an instance was launched that RunInstances takes
# back: without them the relaunched instance would accept IMDSv1, lose its dedicated
# tenancy, placement group, EBS optimization or detailed monitoring.
_METADATA_OPTIONS = (
    "HttpTokens",
    "HttpPutResponseHopLimit",
    "HttpEndpoint",
    "HttpProtocolIpv6",
    "InstanceMetadataTags",
)
_PLACEMENT = ("PartitionNumber", "Tenancy", "Affinity", "HostResourceGroupArn")
# Refusals that say "not now" rather than "never": the undo fails and can be run again.
_NO_CAPACITY_NOW = frozenset(
    {"InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientCapacity"}
)


def launch_settings(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """RunInstances arguments that launch the instance as `attrs` (its description) was."""
    out: dict[str, Any] = {}
    placement = attrs.get("Placement") or {}
    if attrs.get("SubnetId"):
        out["SubnetId"] = attrs["SubnetId"]
    where = {k: placement[k] for k in _PLACEMENT if placement.get(k) not in (None, "")}
    if where.get("Tenancy") == "default":
        del where["Tenancy"]
    if placement.get("GroupId"):  # by id: a shared group has no usable name here
        where["GroupId"] = placement["GroupId"]
    elif placement.get("GroupName"):
        where["GroupName"] = placement["GroupName"]
    # the same dedicated host only where the instance was tied to it; else any host
    if where.get("Affinity") == "host" and placement.get("HostId"):
        where["HostId"] = placement["HostId"]
    if not attrs.get("SubnetId") and placement.get("AvailabilityZone"):
        where["AvailabilityZone"] = placement["AvailabilityZone"]
    if where:
        out["Placement"] = where
    groups = [g["GroupId"] for g in attrs.get("SecurityGroups") or () if g.get("GroupId")]
    if groups:
        out["SecurityGroupIds"] = groups
    if attrs.get("KeyName"):
        out["KeyName"] = attrs["KeyName"]
    if (attrs.get("IamInstanceProfile") or {}).get("Arn"):
        out["IamInstanceProfile"] = {"Arn": attrs["IamInstanceProfile"]["Arn"]}
    metadata = attrs.get("MetadataOptions") or {}
    options = {k: metadata[k] for k in _METADATA_OPTIONS if metadata.get(k) is not None}
    if options.get("HttpTokens") == "optional":
        # IMDSv2 kept where it was required, never asked away: the account's default (which
        # may require it by now) decides for an instance that did not require it
        del options["HttpTokens"]
    if options:
        out["MetadataOptions"] = options
    if isinstance(attrs.get("EbsOptimized"), bool):
        out["EbsOptimized"] = attrs["EbsOptimized"]
    if (attrs.get("Monitoring") or {}).get("State") in ("enabled", "pending"):
        out["Monitoring"] = {"Enabled": True}
    return out


def _finish_relaunch(ctx: OperationContext, instance_id: str, pre_state: Resource) -> str:
    """What a relaunched (running) instance still owes, whichever try launched it: what
    RunInstances cannot set, then stopped if it was stopped when terminated; the notes,
    each after a comma."""
    notes = _restore_after_launch(ctx, instance_id, pre_state)
    if pre_state.state in _DOWN:
        _settle_stopped(ctx, instance_id)
        notes.append("stopped as it was")
    return "".join(f", {note}" for note in notes)


def _restore_after_launch(ctx: OperationContext, new_id: str, pre_state: Resource) -> list[str]:
    """What RunInstances cannot set: a disabled source/destination check (a NAT instance),
    and the Elastic IP the old instance had, when it is still allocated and free. The
    instance is back either way: a step AWS refuses is said in the result, to do by hand,
    rather than failing an undo that every retry would fail again."""
    attrs = pre_state.attributes
    notes: list[str] = []
    if attrs.get("SourceDestCheck") is False:
        try:
            act(
                ctx,
                "ec2",
                "modify_instance_attribute",
                InstanceId=new_id,
                SourceDestCheck={"Value": False},
            )
            notes.append("source/destination check off as it was")
        except ClientError as exc:
            notes.append(f"source/destination check NOT turned off: {describe_error(exc)}")
    public_ip = attrs.get("PublicIpAddress")
    if public_ip and _elastic(attrs, str(public_ip)):
        try:
            notes.append(_reassociate(ctx, new_id, str(public_ip), pre_state.resource_id))
        except ClientError as exc:
            notes.append(f"Elastic IP {public_ip} NOT associated again: {describe_error(exc)}")
    elif public_ip:
        notes.append(f"public IP {public_ip} was AWS's own, not an Elastic IP: not kept")
    return notes


def _elastic(attrs: Mapping[str, Any], public_ip: str) -> bool:
    """The public IP was an Elastic IP: its owner is an account, not "amazon" (an instance
    described without its interfaces is asked about)."""
    owners = [
        (eni.get("Association") or {}).get("IpOwnerId")
        for eni in attrs.get("NetworkInterfaces") or ()
        if (eni.get("Association") or {}).get("PublicIp") == public_ip
    ]
    return not owners or any(owner not in (None, "amazon") for owner in owners)


def _reassociate(ctx: OperationContext, new_id: str, public_ip: str, old_id: str) -> str:
    try:
        addresses = read(ctx, "ec2", "describe_addresses", PublicIps=[public_ip])["Addresses"]
    except ClientError as exc:
        if error_code(exc) != "InvalidAddress.NotFound":
            raise
        addresses = []
    if not addresses or not addresses[0].get("AllocationId"):
        return f"Elastic IP {public_ip} is no longer allocated: not associated again"
    address = addresses[0]
    holder = address.get("InstanceId") or address.get("NetworkInterfaceId")
    if holder == new_id:
        return f"Elastic IP {public_ip} associated again"
    # Free, or still shown on the terminated instance; anything else took it since and
    # keeps it: moving an address away from a live holder is not an undo.
    if address.get("AssociationId") and holder != old_id:
        return f"Elastic IP {public_ip} is now with {holder}: left there, not moved"
    act(
        ctx,
        "ec2",
        "associate_address",
        AllocationId=address["AllocationId"],
        InstanceId=new_id,
        AllowReassociation=holder == old_id,
    )
    return f"Elastic IP {public_ip} associated again"


def _find_image(ctx: OperationContext, tags: dict[str, str], name: str | None = None) -> str | None:
    filters = tag_filters(tags) + ([{"Name": "name", "Values": [name]}] if name else [])
    images = read(ctx, "ec2", "describe_images", Owners=["self"], Filters=filters)["Images"]
    usable = [i for i in images if i.get("State") not in ("failed", "deregistered", "error")]
    usable.sort(key=lambda i: str(i.get("CreationDate", "")))
    return str(usable[0]["ImageId"]) if usable else None


def _await_image(ctx: OperationContext, image_id: str) -> list[str]:
    """Wait until the image is usable; its snapshot ids."""

    def check() -> list[str] | None:
        images = read(ctx, "ec2", "describe_images", ImageIds=[image_id])["Images"]
        state = images[0].get("State") if images else "missing"
        if state == "available":
            mappings = images[0].get("BlockDeviceMappings") or ()
            return [m["Ebs"]["SnapshotId"] for m in mappings if m.get("Ebs", {}).get("SnapshotId")]
        if state in ("pending", "transient"):
            return None
        raise BackupFailed(f"image {image_id} is {state}")

    try:
        return wait_until(ctx, f"image {image_id}", check)
    except WaitTimeoutError as exc:
        raise BackupFailed(str(exc)) from exc


def _settle_stopped(ctx: OperationContext, instance_id: str) -> None:
    """Stopped, whatever it is now (pending, running, stopping, stopped)."""
    if fresh(ctx, EC2, instance_id).state == "pending":
        _running(ctx, instance_id)
    _stop(ctx, instance_id)
    _stopped(ctx, instance_id)


def _find_instance(ctx: OperationContext, tags: dict[str, str]) -> str | None:
    filters = [
        *tag_filters(tags),
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
    ]
    answer = read(ctx, "ec2", "describe_instances", Filters=filters)
    for reservation in answer["Reservations"]:
        for inst in reservation["Instances"]:
            return str(inst["InstanceId"])
    return None
