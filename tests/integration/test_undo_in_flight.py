"""Rollbacks of changes AWS is still making: a volume delete that was made but could not be
verified is rolled back while AWS still reports the volume `deleting`."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.awsrequest import AWSResponse

from backend.core.action_planner import ActionPlanner
from backend.core.database import session_scope
from tests.integration.test_undo_faults import engine, plan, row
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
