"""Rollbacks after the world moved on: a volume delete made but not verified is rolled back
while AWS still reports the volume `deleting`; a terminate's undo whose stop was refused is
run again; a pre-state lacks what a restore needs; an instance resized was stopped since; a
volume changed to gp3 was tuned since; a start AWS refused, whose instance its owner started."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.awsrequest import AWSResponse

from backend.core.action_engine import ActionEngine
from backend.core.action_planner import ActionPlanner
from backend.core.action_undo import NOTHING_CHANGED
from backend.core.database import session_scope
from backend.core.models import ActionRow
from backend.domain.policy import load_text
from backend.providers.aws.session import AwsClients
from tests.integration.test_undo_faults import engine, launch, plan, row
from tests.support.botocore_faults import Faults


def test_a_volume_still_deleting_is_restored_once_it_is_gone(faults: Faults) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    tags = [{"ResourceType": "volume", "Tags": [{"Key": "role", "Value": "delme"}]}]
    vid = ec2.create_volume(AvailabilityZone="us-east-1a", Size=20, TagSpecifications=tags)[
        "VolumeId"
    ]
    described = ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]
    action = plan(faults)[vid]
    with session_scope() as session:
        ActionPlanner().approve(session, action, "alice")
    # the delete is made; reading it back is refused once: "made but could not be verified"
    faults.session.events.register(
        "after-call.ec2.DeleteVolume",
        lambda **_: faults.fail("DescribeVolumes", "UnauthorizedOperation"),
    )
    out = engine(faults).execute([action], dry_run=False, triggered_by="t").outcomes[0]
    assert out.result == "failed" and "roll back" in out.detail, out

    deleting = [{**described, "State": "deleting"}]  # once, as AWS answers mid-deletion

    def still_deleting(params: dict[str, Any], **_: Any) -> Any:
        body = params.get("body") or {}
        if deleting and isinstance(body, dict) and body.get("VolumeId.1") == vid:
            return AWSResponse("https://ec2", 200, {}, None), {"Volumes": [deleting.pop()]}
        return None

    faults.session.events.register("before-call.ec2.DescribeVolumes", still_deleting)
    undone = engine(faults).rollback(action, "sre")

    assert undone.result == "rolled_back", undone
    assert deleting == []  # the undo did see the volume deleting
    restored = ec2.describe_volumes(
        Filters=[{"Name": "tag:finops:restored-from", "Values": [vid]}]
    )["Volumes"]
    assert len(restored) == 1 and restored[0]["VolumeId"] in undone.detail
    assert row(action).state == "rolled_back"


TERMINATE = """
policies:
  - name: terminate-tagged
    resource: ec2
    filters: [{"tag:role": killme}]
    action: terminate
    mode: approval
    notice: {notify: false}
"""


def planned(faults: Faults, text: str) -> tuple[ActionEngine, int]:
    """Scan and plan this one-policy pack, approve its one action; its engine and id."""
    pack = load_text(text, "pack.yml")
    (action_id,) = plan(faults, pack).values()
    if row(action_id).state == "awaiting_approval":
        with session_scope() as session:
            ActionPlanner().approve(session, action_id, "alice")
    return ActionEngine(pack=pack, clients=AwsClients(base_session=faults.session)), action_id


def test_a_terminate_undo_run_again_leaves_the_relaunched_instance_stopped_as_it_was(
    faults: Faults,
) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    iid = launch("killme")
    ec2.stop_instances(InstanceIds=[iid])
    terminator, action = planned(faults, TERMINATE)
    assert terminator.execute([action], dry_run=False, triggered_by="t").count("succeeded") == 1

    faults.fail("StopInstances", "RequestLimitExceeded", times=20)  # the undo's stop refused
    assert terminator.rollback(action, "sre").result == "failed"
    faults.pending.clear()
    again = terminator.rollback(action, "sre")

    assert again.result == "rolled_back", again
    assert again.detail.endswith(", stopped as it was"), again.detail
    relaunched = [
        i
        for r in ec2.describe_instances(
            Filters=[{"Name": "tag:finops:restored-from", "Values": [iid]}]
        )["Reservations"]
        for i in r["Instances"]
    ]
    assert [i["State"]["Name"] for i in relaunched] == ["stopped"]


def test_a_volume_whose_pre_state_lacks_its_type_is_not_restored_as_a_guess(
    faults: Faults,
) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    tags = [{"ResourceType": "volume", "Tags": [{"Key": "role", "Value": "delme"}]}]
    vid = ec2.create_volume(
        AvailabilityZone="us-east-1a", Size=50, VolumeType="io2", Iops=8000, TagSpecifications=tags
    )["VolumeId"]
    action = plan(faults)[vid]
    with session_scope() as session:
        ActionPlanner().approve(session, action, "alice")
    assert engine(faults).execute([action], dry_run=False, triggered_by="t").count("succeeded") == 1
    with session_scope() as session:  # recorded by an older release, or edited by hand
        found = session.get(ActionRow, action)
        assert found is not None and found.pre_state is not None
        attributes = {k: v for k, v in found.pre_state["attributes"].items() if k != "VolumeType"}
        found.pre_state = {**found.pre_state, "attributes": attributes}

    undone = engine(faults).rollback(action, "sre")

    assert undone.result == "failed", undone
    assert undone.detail.startswith(f"cannot undo: the pre-state of {vid} has no VolumeType")
    restored = ec2.describe_volumes(
        Filters=[{"Name": "tag:finops:restored-from", "Values": [vid]}]
    )["Volumes"]
    assert restored == []
    assert row(action).state == "succeeded"  # still: a person decides


RESIZE = """
policies:
  - name: resize-tagged
    resource: ec2
    filters: [{"tag:role": resizeme}]
    action: {type: resize, instance-type: t3.small}
    mode: auto
    notice: {notify: false}
"""
GP3 = """
policies:
  - name: gp2-to-gp3
    resource: ebs
    filters: [{VolumeType: gp2}]
    action: {type: modify-volume, volume-type: gp3}
    mode: auto
    notice: {notify: false}
"""


def test_an_instance_stopped_since_its_resize_is_resized_back_and_left_stopped(
    faults: Faults,
) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    iid = launch("resizeme")  # m5.large, running
    resizer, action = planned(faults, RESIZE)
    assert resizer.execute([action], dry_run=False, triggered_by="t").count("succeeded") == 1
    ec2.stop_instances(InstanceIds=[iid])  # its owner, or the evening schedule

    undone = resizer.rollback(action, "sre")

    assert undone.result == "rolled_back", undone
    assert "left stopped" in undone.detail
    found = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert (found["InstanceType"], found["State"]["Name"]) == ("m5.large", "stopped")


def test_a_volume_tuned_since_its_change_to_gp3_is_not_changed_back(faults: Faults) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vid = ec2.create_volume(AvailabilityZone="us-east-1a", Size=100, VolumeType="gp2")["VolumeId"]
    modifier, action = planned(faults, GP3)
    assert modifier.execute([action], dry_run=False, triggered_by="t").count("succeeded") == 1
    ec2.modify_volume(VolumeId=vid, Iops=12000, Throughput=750)  # its owner tunes it

    undone = modifier.rollback(action, "sre")

    assert undone.result == "failed", undone
    assert "Iops 12000" in undone.detail and "changed since" in undone.detail
    volume = ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]
    assert (volume["VolumeType"], volume["Iops"], volume["Throughput"]) == ("gp3", 12000, 750)


START = """
policies:
  - name: start-tagged
    resource: ec2
    filters: [{"tag:role": startme}]
    action: start
    mode: auto
    notice: {notify: false}
"""


def test_a_start_aws_refused_is_not_undone_by_stopping_what_its_owner_started(
    faults: Faults,
) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    iid = launch("startme")
    ec2.stop_instances(InstanceIds=[iid])
    starter, action = planned(faults, START)
    faults.fail("StartInstances", "InsufficientInstanceCapacity")
    assert starter.execute([action], dry_run=False, triggered_by="t").count("failed") == 1
    ec2.start_instances(InstanceIds=[iid])  # its owner starts it by hand: needed now

    calls = len(faults.calls)
    undone = starter.rollback(action, "sre")

    assert undone.result == "rolled_back", undone
    assert undone.detail == NOTHING_CHANGED
    assert faults.calls[calls:] == []
    state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert state["State"]["Name"] == "running"
