"""Relations change between the scan and the execution; the execution reads them from AWS.

A snapshot judged orphaned on an old volume list (the last scan could not list the volumes)
whose volume exists, a load balancer idle by last week's requests that has gone into
service since, and the snapshot a volume delete can still be rolled back from: all are
blocked, and AWS keeps them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from backend.config import get_settings, reset_settings_cache
from backend.core.action_engine import ActionEngine
from backend.core.action_planner import ActionPlanner
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import ActionRow
from backend.core.policy_evaluator import StoredPolicyEvaluator
from backend.core.scan_service import ScanService
from backend.core.types import utcnow
from backend.domain.policy import load_text
from backend.domain.policy.model import PolicyPack
from tests.integration.aws_fleet import MOTO_LINUX_AMI, client
from tests.support.fault_proxy import Fault, FaultProxy

pytestmark = pytest.mark.moto_server

ORPHANS = """
policies:
  - name: orphan-snapshots
    resource: ebs-snapshot
    filters: [orphaned, {not: [backs-ami]}]
    action: delete
    mode: approval
"""
IDLE_ALB = """
policies:
  - name: idle-alb-delete
    resource: elb
    filters:
      - Type: application
      - {type: metrics, name: RequestCount, statistic: Sum, days: 7, op: lt, value: 100,
         missing-value: 0}
    action: delete
    mode: approval
"""


@pytest.fixture
def account(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "100")
    reset_settings_cache()
    upgrade()
    return moto_url


def plan_and_approve(pack: PolicyPack) -> int:
    with session_scope() as session:
        StoredPolicyEvaluator(session, now=utcnow()).run(pack)
        ActionPlanner().plan(session, pack, requested_by="planner")
        row = session.scalars(select(ActionRow)).one()
        ActionPlanner().approve(session, row.id, "alice")
        return row.id


def verdicts(action_id: int) -> dict[str, Any]:
    with session_scope() as session:
        row = session.get(ActionRow, action_id)
        assert row is not None
        return {v["rule"]: (v["ok"], v["reason"]) for v in row.safety_verdict["verdicts"]}


def test_a_snapshot_of_a_volume_made_after_the_last_full_scan_is_not_deleted(
    account: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ec2 = client(account, "ec2", "us-east-1")
    pack = load_text(ORPHANS, "orphans.yml")
    ScanService(get_settings()).run(pack=pack, regions=["us-east-1"])  # volumes listed whole
    live = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=live, Description="nightly backup")["SnapshotId"]
    proxy = FaultProxy(upstream=account).start()  # the next scan cannot list the volumes
    try:
        proxy.faults.append(Fault(service="ec2", kind="access-denied", action="DescribeVolumes"))
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        reset_settings_cache()
        ScanService(get_settings()).run(pack=pack, regions=["us-east-1"])
    finally:
        proxy.stop()
    monkeypatch.setenv("AWS_ENDPOINT_URL", account)
    reset_settings_cache()
    # planned on the old volume list, where the new volume is missing...
    action_id = plan_and_approve(pack)

    outcome = ActionEngine(pack=pack).execute_one(action_id, None, dry_run=False)

    # ...and refused at execution, on the volume AWS describes now
    assert outcome.result == "blocked", outcome
    assert verdicts(action_id)["still-matches-policy"] == (False, "the policy no longer selects it")
    snapshots = ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"]
    assert [s["SnapshotId"] for s in snapshots] == [snapshot]


def test_a_load_balancer_gone_into_service_since_the_scan_is_not_deleted(account: str) -> None:
    ec2 = client(account, "ec2", "us-east-1")
    elbv2 = client(account, "elbv2", "us-east-1")
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnets = [
        s["SubnetId"]
        for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
    ][:2]
    made = elbv2.create_load_balancer(Name="web", Subnets=subnets, Type="application")
    arn = made["LoadBalancers"][0]["LoadBalancerArn"]
    pack = load_text(IDLE_ALB, "alb.yml")
    ScanService(get_settings()).run(pack=pack, regions=["us-east-1"])
    action_id = plan_and_approve(pack)
    # since the scan: a target group with a running instance behind a listener
    instance = ec2.run_instances(
        ImageId=MOTO_LINUX_AMI, MinCount=1, MaxCount=1, SubnetId=subnets[0]
    )["Instances"][0]["InstanceId"]
    group = elbv2.create_target_group(Name="web-tg", Protocol="HTTP", Port=80, VpcId=vpc)
    group_arn = group["TargetGroups"][0]["TargetGroupArn"]
    elbv2.register_targets(TargetGroupArn=group_arn, Targets=[{"Id": instance}])
    elbv2.create_listener(
        LoadBalancerArn=arn,
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": group_arn}],
    )

    outcome = ActionEngine(pack=pack).execute_one(action_id, None, dry_run=False)

    assert outcome.result == "blocked", outcome
    ok, reason = verdicts(action_id)["dependency"]
    assert not ok and reason == f"1 target(s) in service: {instance} (healthy)"
    assert [lb["LoadBalancerArn"] for lb in elbv2.describe_load_balancers()["LoadBalancers"]] == [
        arn
    ]


VOLUMES_THEN_ORPHANS = """
policies:
  - name: unattached-ebs-delete
    resource: ebs
    filters: [unattached]
    action: {type: delete, backup: true}
    mode: approval
  - name: orphan-snapshots
    resource: ebs-snapshot
    filters: [orphaned, {not: [backs-ami]}]
    action: delete
    mode: approval
"""


def test_the_backup_of_a_delete_that_can_be_rolled_back_is_not_deleted(account: str) -> None:
    """The snapshot taken before a volume delete is an orphan (its volume is gone), and the
    orphan policy selects it: deleting it would make the rollback impossible."""
    ec2 = client(account, "ec2", "us-east-1")
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
    pack = load_text(VOLUMES_THEN_ORPHANS, "both.yml")
    ScanService(get_settings()).run(pack=pack, regions=["us-east-1"])
    delete_volume = plan_and_approve(pack)
    assert ActionEngine(pack=pack).execute_one(delete_volume, None, dry_run=False).result == (
        "succeeded"
    )
    with session_scope() as session:
        backup = session.get(ActionRow, delete_volume).backup_ref  # type: ignore[union-attr]
    assert backup and backup.startswith("snap-")
    ScanService(get_settings()).run(pack=pack, regions=["us-east-1"])
    with session_scope() as session:
        StoredPolicyEvaluator(session, now=utcnow()).run(pack)
        ActionPlanner().plan(session, pack, requested_by="planner")
        (delete_backup,) = session.scalars(select(ActionRow).where(ActionRow.resource_id == backup))
        ActionPlanner().approve(session, delete_backup.id, "alice")
        backup_action = delete_backup.id

    outcome = ActionEngine(pack=pack).execute_one(backup_action, None, dry_run=False)

    assert outcome.result == "blocked", outcome
    ok, reason = verdicts(backup_action)["dependency"]
    assert not ok
    assert reason == f"the backup that rolling back action(s) {delete_volume} restores from"
    undone = ActionEngine(pack=pack).rollback(delete_volume, "owner")
    assert undone.result == "rolled_back", undone
    assert f"from {backup}" in undone.detail and volume in undone.detail
