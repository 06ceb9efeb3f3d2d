"""Operations and their inverses against a moto_server: instances, volumes, snapshots, AMIs.

Each test checks the account afterwards, not only what the operation returned.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from botocore.exceptions import ClientError

from backend.domain.policy.actions import ACTIONS
from backend.domain.resources import Resource, ResourceKind
from backend.providers.aws.describe import DESCRIBERS
from backend.providers.aws.operations import (
    OPERATIONS,
    CannotUndo,
    OperationContext,
    ResourceGone,
    operation_for,
)
from backend.providers.aws.session import AccountTarget, AwsClients
from tests.integration.aws_fleet import client, seed_region
from tests.support.fault_proxy import Fault, FaultProxy

pytestmark = pytest.mark.moto_server
K = ResourceKind
ACCOUNT = "123456789012"
REGION = "us-east-1"
KEY_TAG = "finops:idempotency-key"


class Calls:
    """The guard: records every changing call, can play the emergency stop."""

    def __init__(self) -> None:
        self.made: list[str] = []
        self.stopped = False

    def __call__(self, name: str) -> None:
        if self.stopped:
            raise RuntimeError(f"emergency stop: {name} not made")
        self.made.append(name)


def make_ctx(url: str, key: str = "action-1", calls: Calls | None = None) -> OperationContext:
    clients = AwsClients(endpoint_url=url)
    return OperationContext(
        client_for=lambda service: clients.client(AccountTarget(None), service, REGION),
        account_id=ACCOUNT,
        region=REGION,
        idempotency_key=key,
        guard=calls,
        wait_timeout=20,
        poll_interval=0.05,
    )


@pytest.fixture
def ec2(moto_url: str) -> Any:
    return client(moto_url, "ec2", REGION)


_AMI: list[str] = []


def linux_ami(ec2: Any) -> str:
    """One of moto's Linux AMIs (they survive a reset; listing them all takes seconds)."""
    if not _AMI:
        images = ec2.describe_images(
            Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-hvm-*"]}]
        )["Images"]
        _AMI.append(str(images[0]["ImageId"]))
    return _AMI[0]


def subnet(ec2: Any) -> str:
    return str(ec2.describe_subnets()["Subnets"][0]["SubnetId"])


def launch(ec2: Any, *, type_: str = "m5.large", tags: dict[str, str] | None = None) -> str:
    answer = ec2.run_instances(
        ImageId=linux_ami(ec2),
        MinCount=1,
        MaxCount=1,
        InstanceType=type_,
        SubnetId=subnet(ec2),
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": k, "Value": v} for k, v in (tags or {"env": "dev"}).items()],
            }
        ],
    )
    return str(answer["Instances"][0]["InstanceId"])


def volume(ec2: Any, tags: dict[str, str], **kwargs: Any) -> str:
    answer = ec2.create_volume(
        AvailabilityZone=f"{REGION}a",
        TagSpecifications=[
            {"ResourceType": "volume", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
        **{"Size": 50, "VolumeType": "gp2", **kwargs},
    )
    return str(answer["VolumeId"])


def instance(ec2: Any, iid: str) -> dict[str, Any]:
    return dict(ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0])


def tags_of(item: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get("Tags") or ()}


def own_snapshots(ec2: Any) -> list[dict[str, Any]]:
    # moto ignores OwnerIds=self (and answers slowly with its public snapshots)
    owned = [{"Name": "owner-id", "Values": [ACCOUNT]}]
    return list(ec2.describe_snapshots(Filters=owned)["Snapshots"])


# --- the registry ---


def test_every_changing_action_of_the_registry_has_an_operation_and_no_more() -> None:
    wanted = {
        (a.name, kind)
        for a in ACTIONS.values()
        if a.changes and not a.undo_only
        for kind in a.rules
    }
    assert set(OPERATIONS) == wanted
    for (action, kind), op in OPERATIONS.items():
        assert (op.action, op.kind) == (action, kind)
    assert operation_for("deregister", K.AMI) is OPERATIONS[("delete", K.AMI)]
    with pytest.raises(KeyError, match=r"undo step.*terminate"):
        operation_for("restore-from-ami", K.EC2_INSTANCE)
    with pytest.raises(KeyError, match="no AWS operation for action 'stop' on 'ebs'"):
        operation_for("stop", K.EBS_VOLUME)
    with pytest.raises(KeyError, match="changes nothing"):
        operation_for("report", K.EBS_VOLUME)


# --- describe ---


def stable(resource: Resource) -> Resource:
    """RDS's LatestRestorableTime moves on every describe."""
    attributes = {k: v for k, v in resource.attributes.items() if k != "LatestRestorableTime"}
    return dataclasses.replace(resource, attributes=attributes)


def test_a_fresh_describe_has_the_shape_the_inventory_stores(moto_url: str) -> None:
    fleet = seed_region(moto_url, REGION, instances=2)
    ctx = make_ctx(moto_url)
    for kind, ids in fleet.ids.items():
        k = K(kind)
        inventory = {r.resource_id: r for r in DESCRIBERS[k](ctx.client_for, ACCOUNT, REGION)}
        op = next(op for (_, kk), op in OPERATIONS.items() if kk is k)
        for rid in ids:
            assert stable(op.describe(ctx, rid)) == stable(inventory[rid]), (kind, rid)


def test_a_deleted_resource_is_gone_by_its_error_code(moto_url: str) -> None:
    fleet = seed_region(moto_url, REGION, instances=2)
    ec2 = client(moto_url, "ec2", REGION)
    ctx = make_ctx(moto_url)
    loose = next(
        v["VolumeId"] for v in ec2.describe_volumes()["Volumes"] if v["State"] == "available"
    )
    ec2.delete_volume(VolumeId=loose)
    iid = fleet.ids["ec2"][0]
    ec2.terminate_instances(InstanceIds=[iid])  # moto keeps it, as "terminated"
    unassociated = fleet.ids["elastic-ip"][1]
    ec2.release_address(AllocationId=unassociated)
    lb = fleet.ids["elb"][0]
    client(moto_url, "elbv2", REGION).delete_load_balancer(LoadBalancerArn=lb)
    rds = client(moto_url, "rds", REGION)
    rds.delete_db_instance(DBInstanceIdentifier=f"db-{REGION}", SkipFinalSnapshot=True)
    gone = [
        (K.EBS_VOLUME, loose),
        (K.EC2_INSTANCE, iid),
        (K.EC2_INSTANCE, "i-0123456789abcdef0"),
        (K.EBS_SNAPSHOT, "snap-0123456789abcdef0"),
        (K.AMI, "ami-0123456789abcdef0"),
        (K.ELASTIC_IP, unassociated),
        (K.LOAD_BALANCER, lb),
        (K.RDS_INSTANCE, f"db-{REGION}"),
    ]
    for kind, rid in gone:
        op = next(op for (_, k), op in OPERATIONS.items() if k is kind)
        with pytest.raises(ResourceGone):
            op.describe(ctx, rid)
    stale = Resource(K.EC2_INSTANCE, iid, ACCOUNT, REGION, "running")
    with pytest.raises(ResourceGone):  # acting on it is no success
        operation_for("stop", K.EC2_INSTANCE).execute(ctx, stale, {})
    with pytest.raises(ResourceGone):  # nor is a backup of it
        operation_for("terminate", K.EC2_INSTANCE).backup(ctx, stale)
    with pytest.raises(CannotUndo, match="no longer exists"):
        operation_for("stop", K.EC2_INSTANCE).undo(ctx, stale, None, {})


# --- stop and start ---


def test_stop_is_idempotent_verified_and_undone_by_a_start(moto_url: str, ec2: Any) -> None:
    iid = launch(ec2)
    calls = Calls()
    ctx = make_ctx(moto_url, calls=calls)
    op = operation_for("stop", K.EC2_INSTANCE)
    before = op.describe(ctx, iid)
    op.execute(ctx, before, {})
    op.execute(ctx, before, {})  # a redelivered task: no second call
    assert calls.made == ["ec2:stop_instances"]
    after = op.verify(ctx, iid, {})
    assert after is not None and after.state == "stopped"
    assert instance(ec2, iid)["State"]["Name"] == "stopped"
    assert op.undo(ctx, before, None, {}) == f"started {iid}"
    assert instance(ec2, iid)["State"]["Name"] == "running"
    start = operation_for("start", K.EC2_INSTANCE)
    start.execute(ctx, op.describe(ctx, iid), {})  # already running: nothing
    assert calls.made == ["ec2:stop_instances", "ec2:start_instances"]


def test_the_guard_stops_a_call_before_it_reaches_aws(moto_url: str, ec2: Any) -> None:
    iid = launch(ec2)
    calls = Calls()
    calls.stopped = True
    ctx = make_ctx(moto_url, calls=calls)
    op = operation_for("stop", K.EC2_INSTANCE)
    with pytest.raises(RuntimeError, match="emergency stop"):
        op.execute(ctx, op.describe(ctx, iid), {})
    assert instance(ec2, iid)["State"]["Name"] == "running"


# --- resize ---


def test_resize_stops_changes_starts_and_undoes(moto_url: str, ec2: Any) -> None:
    iid = launch(ec2, type_="m5.xlarge")
    calls = Calls()
    ctx = make_ctx(moto_url, calls=calls)
    op = operation_for("rightsize", K.EC2_INSTANCE)
    before = op.describe(ctx, iid)
    assert op.backup(ctx, before) == 'config:{"InstanceType": "m5.xlarge"}'
    params = {"instance_type": "m5.large"}
    op.execute(ctx, before, params)
    op.execute(ctx, before, params)
    assert calls.made == [
        "ec2:stop_instances",
        "ec2:modify_instance_attribute",
        "ec2:start_instances",
    ]
    after = op.verify(ctx, iid, params)
    assert after is not None and after.attributes["InstanceType"] == "m5.large"
    assert instance(ec2, iid)["State"]["Name"] == "running"
    result = op.undo(ctx, before, None, params)
    assert result == f"resized {iid} back to m5.xlarge and started it"
    now = instance(ec2, iid)
    assert (now["InstanceType"], now["State"]["Name"]) == ("m5.xlarge", "running")


def test_undo_of_a_resize_leaves_a_type_someone_set_since(moto_url: str, ec2: Any) -> None:
    iid = launch(ec2, type_="m5.xlarge")
    ctx = make_ctx(moto_url)
    op = operation_for("rightsize", K.EC2_INSTANCE)
    before = op.describe(ctx, iid)
    params = {"instance_type": "m5.large"}
    op.execute(ctx, before, params)
    op.verify(ctx, iid, params)
    ec2.stop_instances(InstanceIds=[iid])  # the owner's own resize
    ec2.modify_instance_attribute(InstanceId=iid, InstanceType={"Value": "c5.2xlarge"})
    ec2.start_instances(InstanceIds=[iid])
    with pytest.raises(CannotUndo, match="changed since"):
        op.undo(ctx, before, None, params)
    now = instance(ec2, iid)
    assert (now["InstanceType"], now["State"]["Name"]) == ("c5.2xlarge", "running")


def test_a_refused_resize_starts_the_instance_again(moto_url: str, ec2: Any) -> None:
    """Stopped for the change, the change refused: it goes back up before the error."""
    iid = launch(ec2, type_="m5.xlarge")
    proxy = FaultProxy(upstream=moto_url).start()
    try:
        proxy.faults.append(Fault(service="ec2", action="ModifyInstanceAttribute"))
        ctx = make_ctx(proxy.url)
        op = operation_for("rightsize", K.EC2_INSTANCE)
        with pytest.raises(ClientError, match="UnauthorizedOperation"):
            op.execute(ctx, op.describe(ctx, iid), {"instance_type": "m5.large"})
    finally:
        proxy.stop()
    now = instance(ec2, iid)
    assert (now["InstanceType"], now["State"]["Name"]) == ("m5.xlarge", "running")


def test_resizing_a_stopped_instance_leaves_it_stopped(moto_url: str, ec2: Any) -> None:
    iid = launch(ec2)
    ec2.stop_instances(InstanceIds=[iid])
    ctx = make_ctx(moto_url)
    op = operation_for("resize", K.EC2_INSTANCE)
    before = op.describe(ctx, iid)
    op.execute(ctx, before, {"instance_type": "t3.medium"})
    assert op.verify(ctx, iid, {"instance_type": "t3.medium"}) is not None
    now = instance(ec2, iid)
    assert (now["InstanceType"], now["State"]["Name"]) == ("t3.medium", "stopped")
    with pytest.raises(ValueError, match="instance_type"):
        op.execute(ctx, before, {"instance_type": None})


# --- terminate ---


def test_terminate_images_first_and_undo_launches_a_new_instance(moto_url: str, ec2: Any) -> None:
    iid = launch(ec2, tags={"env": "dev", "Name": "batch", "owner": "team-a"})
    old = instance(ec2, iid)
    calls = Calls()
    ctx = make_ctx(moto_url, key="act-terminate", calls=calls)
    op = operation_for("terminate", K.EC2_INSTANCE)
    before = op.describe(ctx, iid)
    image = op.backup(ctx, before)
    assert image is not None and image.startswith("ami-")
    assert op.backup(ctx, before) == image  # one key, one image
    ours = ec2.describe_images(
        Owners=["self"], Filters=[{"Name": f"tag:{KEY_TAG}", "Values": ["act-terminate"]}]
    )["Images"]
    assert [i["ImageId"] for i in ours] == [image]
    assert tags_of(ours[0])["finops:source-instance"] == iid
    assert calls.made.count("ec2:create_image") == 1
    snapshots = [m["Ebs"]["SnapshotId"] for m in ours[0]["BlockDeviceMappings"]]
    described = ec2.describe_snapshots(SnapshotIds=snapshots)["Snapshots"]
    assert all(tags_of(s)[KEY_TAG] == "act-terminate" for s in described)

    calls.made.clear()
    op.execute(ctx, before, {})
    op.execute(ctx, before, {})
    assert calls.made == ["ec2:terminate_instances"]
    assert op.verify(ctx, iid, {}) is None
    assert instance(ec2, iid)["State"]["Name"] == "terminated"

    result = op.undo(ctx, before, image, {})
    assert "NEW instance id" in result and iid in result
    restored = ec2.describe_instances(
        Filters=[
            {"Name": "image-id", "Values": [image]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
    )["Reservations"]
    assert len(restored) == 1
    new = restored[0]["Instances"][0]
    assert new["InstanceId"] != iid and new["InstanceId"] in result
    assert (new["InstanceType"], new["SubnetId"]) == (old["InstanceType"], old["SubnetId"])
    new_tags = tags_of(new)
    assert {k: new_tags[k] for k in tags_of(old)} == tags_of(old)
    assert new_tags["finops:restored-from"] == iid
    again = op.undo(ctx, before, image, {})  # a retried undo launches nothing more
    assert again.startswith("already relaunched") and new["InstanceId"] in again
    running = ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["running", "pending"]}]
    )["Reservations"]
    assert len(running) == 1


def test_terminate_cannot_be_undone_without_its_image(moto_url: str, ec2: Any) -> None:
    iid = launch(ec2)
    ctx = make_ctx(moto_url)
    op = operation_for("terminate", K.EC2_INSTANCE)
    before = op.describe(ctx, iid)
    op.execute(ctx, before, {})
    with pytest.raises(CannotUndo, match="no image"):
        op.undo(ctx, before, None, {})
    with pytest.raises(CannotUndo, match="is gone"):
        op.undo(ctx, before, "ami-0123456789abcdef0", {})


# --- volumes ---


def test_delete_volume_snapshots_first_and_undo_restores_it(moto_url: str, ec2: Any) -> None:
    tags = {"owner": "team-a", "env": "dev"}
    vid = volume(ec2, tags, VolumeType="gp3", Size=80, Iops=4000, Throughput=250)
    calls = Calls()
    ctx = make_ctx(moto_url, key="act-vol", calls=calls)
    op = operation_for("delete", K.EBS_VOLUME)
    before = op.describe(ctx, vid)
    snap = op.backup(ctx, before)
    assert snap is not None and op.backup(ctx, before) == snap
    ours = [s for s in own_snapshots(ec2) if s.get("VolumeId") == vid]
    assert [s["SnapshotId"] for s in ours] == [snap]
    assert tags_of(ours[0]) == {**tags, "finops:source-volume": vid, KEY_TAG: "act-vol"}

    op.execute(ctx, before, {})
    op.execute(ctx, before, {})
    assert calls.made == ["ec2:create_snapshot", "ec2:delete_volume"]
    assert op.verify(ctx, vid, {}) is None
    assert vid not in {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}

    result = op.undo(ctx, before, snap, {})
    restored = [v for v in ec2.describe_volumes()["Volumes"] if v.get("SnapshotId") == snap]
    assert len(restored) == 1
    new = restored[0]
    assert new["VolumeId"] in result and f"restored {vid} from {snap}" in result
    assert (new["VolumeType"], new["Size"], new["AvailabilityZone"]) == ("gp3", 80, f"{REGION}a")
    assert (new["Iops"], new["Throughput"]) == (4000, 250)
    new_tags = tags_of(new)
    assert {k: new_tags[k] for k in tags} == tags
    assert new_tags["finops:restored-from"] == vid
    assert op.undo(ctx, before, snap, {}).startswith("already restored")
    assert len([v for v in ec2.describe_volumes()["Volumes"] if v.get("SnapshotId") == snap]) == 1


def test_a_throttled_snapshot_is_retried_without_a_second_snapshot(moto_url: str) -> None:
    proxy = FaultProxy(upstream=moto_url).start()
    try:
        ec2 = client(moto_url, "ec2", REGION)
        vid = volume(ec2, {"owner": "x"})
        fault = Fault(service="ec2", action="CreateSnapshot", kind="throttle", times=2)
        proxy.faults.append(fault)
        ctx = make_ctx(proxy.url)
        op = operation_for("delete", K.EBS_VOLUME)
        snap = op.backup(ctx, op.describe(ctx, vid))
        assert fault.hits == 2
        assert [s["SnapshotId"] for s in own_snapshots(ec2) if s.get("VolumeId") == vid] == [snap]
    finally:
        proxy.stop()


def test_modify_volume_and_back(moto_url: str, ec2: Any) -> None:
    vid = volume(ec2, {"owner": "x"}, VolumeType="gp2", Size=100)
    calls = Calls()
    ctx = make_ctx(moto_url, calls=calls)
    op = operation_for("modify", K.EBS_VOLUME)
    before = op.describe(ctx, vid)
    params = {"volume_type": "gp3", "iops": 3000, "throughput": 125}
    op.execute(ctx, before, params)
    op.execute(ctx, before, params)
    assert calls.made == ["ec2:modify_volume"]
    after = op.verify(ctx, vid, params)
    assert after is not None and after.attributes["VolumeType"] == "gp3"
    assert op.undo(ctx, before, op.backup(ctx, before), params) == f"modified {vid} back to gp2"
    assert ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]["VolumeType"] == "gp2"


def test_undo_of_a_volume_change_leaves_a_type_someone_set_since(moto_url: str, ec2: Any) -> None:
    vid = volume(ec2, {"owner": "x"}, VolumeType="gp2", Size=100)
    ctx = make_ctx(moto_url)
    op = operation_for("modify", K.EBS_VOLUME)
    before = op.describe(ctx, vid)
    params = {"volume_type": "gp3"}
    op.execute(ctx, before, params)
    op.verify(ctx, vid, params)
    ec2.modify_volume(VolumeId=vid, VolumeType="io2", Iops=20000)
    with pytest.raises(CannotUndo, match="changed since"):
        op.undo(ctx, before, op.backup(ctx, before), params)
    assert ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]["VolumeType"] == "io2"


def test_a_big_gp2_keeps_its_baseline_on_gp3(moto_url: str, ec2: Any) -> None:
    """gp3 asked for without numbers gets 3,000 IOPS and 125 MB/s; a 2,000 GiB gp2 had
    6,000 and 250: the change asks for those."""
    vid = volume(ec2, {"owner": "x"}, VolumeType="gp2", Size=2000)
    ctx = make_ctx(moto_url)
    op = operation_for("modify", K.EBS_VOLUME)
    op.execute(ctx, op.describe(ctx, vid), {"volume_type": "gp3"})
    after = ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]
    assert (after["VolumeType"], after["Iops"], after["Throughput"]) == ("gp3", 6000, 250)


# --- snapshots and images ---


def test_delete_snapshot_has_no_undo(moto_url: str, ec2: Any) -> None:
    snap = ec2.create_snapshot(VolumeId=volume(ec2, {"owner": "x"}))["SnapshotId"]
    ctx = make_ctx(moto_url)
    op = operation_for("delete", K.EBS_SNAPSHOT)
    before = op.describe(ctx, snap)
    assert op.backup(ctx, before) is None
    op.execute(ctx, before, {})
    op.execute(ctx, before, {})  # already gone: fine
    assert op.verify(ctx, snap, {}) is None
    assert snap not in {s["SnapshotId"] for s in own_snapshots(ec2)}
    with pytest.raises(CannotUndo, match="cannot be recovered"):
        op.undo(ctx, before, None, {})


def test_deregister_image_has_no_undo(moto_url: str, ec2: Any) -> None:
    image = ec2.create_image(InstanceId=launch(ec2), Name="old-image")["ImageId"]
    ctx = make_ctx(moto_url)
    op = operation_for("deregister", K.AMI)
    before = op.describe(ctx, image)
    op.execute(ctx, before, {})
    op.execute(ctx, before, {})
    assert op.verify(ctx, image, {}) is None
    with pytest.raises(CannotUndo):
        op.undo(ctx, before, None, {})
