"""What a scan cannot decide it leaves alone: a failed metrics call or an unlisted region's
volumes make a verdict UNKNOWN, and an open opportunity then stays open (moto_server
behind a proxy that injects the failure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from backend.config import get_settings, reset_settings_cache
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import OpportunityRow, ResourceRow
from backend.core.scan_service import ScanService
from backend.domain.policy import load_text
from tests.integration.aws_fleet import MOTO_LINUX_AMI, client
from tests.support.fault_proxy import Fault, FaultProxy

pytestmark = pytest.mark.moto_server

IDLE = """
policies:
  - name: idle
    resource: ec2
    filters:
      - {type: metrics, name: CPUUtilization, statistic: Average, days: 14, op: lt, value: 5}
    action: stop
"""
ORPHANS = """
policies:
  - name: orphans
    resource: ebs-snapshot
    filters: [orphaned]
    action: {type: delete, backup: false}
"""


@pytest.fixture
def proxy(
    moto_url: str, any_database: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultProxy]:
    started = FaultProxy(upstream=moto_url).start()
    upgrade()
    monkeypatch.setenv("AWS_ENDPOINT_URL", started.url)
    reset_settings_cache()
    yield started
    started.stop()


def statuses() -> dict[str, str]:
    with session_scope() as session:
        rows = session.execute(
            select(ResourceRow.resource_id, OpportunityRow.status).join(
                ResourceRow, ResourceRow.id == OpportunityRow.resource_pk
            )
        )
        return {rid: status for rid, status in rows}


def scan(pack: str) -> str:
    return (
        ScanService(get_settings()).run(pack=load_text(pack, "p.yml"), regions=["us-east-1"]).status
    )


def test_a_failed_metrics_call_leaves_the_idle_opportunity_open(
    moto_url: str, proxy: FaultProxy
) -> None:
    ec2 = client(moto_url, "ec2", "us-east-1")
    image = MOTO_LINUX_AMI
    run = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="m5.large")
    instance = run["Instances"][0]["InstanceId"]
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    client(moto_url, "cloudwatch", "us-east-1").put_metric_data(
        Namespace="AWS/EC2",
        MetricData=[
            {
                "MetricName": "CPUUtilization",
                "Value": 1.0,
                "Unit": "Percent",
                "Dimensions": [{"Name": "InstanceId", "Value": instance}],
                "Timestamp": hour - dt.timedelta(days=d + 1),
            }
            for d in range(14)
        ],
    )
    assert scan(IDLE) == "complete" and statuses() == {instance: "open"}
    proxy.faults.append(Fault(service="monitoring", kind="access-denied"))
    assert scan(IDLE) == "partial"
    assert statuses() == {instance: "open"}


def test_volumes_that_could_not_be_listed_leave_the_orphan_open(
    moto_url: str, proxy: FaultProxy
) -> None:
    ec2 = client(moto_url, "ec2", "us-east-1")
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=5)["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    ec2.delete_volume(VolumeId=volume)
    assert scan(ORPHANS) == "complete" and statuses() == {snapshot: "open"}
    proxy.faults.append(Fault(service="ec2", action="DescribeVolumes", kind="access-denied"))
    assert scan(ORPHANS) == "partial"
    assert statuses() == {snapshot: "open"}
