"""A small account with idle, protected and opted-out resources, and a pack that acts on it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from backend.config import get_settings
from backend.core.action_engine import ActionEngine
from backend.core.action_planner import ActionPlanner, PlanResult
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import ActionRow
from backend.core.scan_service import ScanService
from backend.domain.policy import load_text
from backend.domain.policy.model import PolicyPack
from tests.integration.aws_fleet import MOTO_LINUX_AMI, client

# The policies do not exclude production or opted-out resources on purpose: the safety
# rules must spare them whatever a policy says.
PACK = """
policies:
  - name: stop-idle
    resource: ec2
    filters:
      - "State.Name": running
      - {type: metrics, name: CPUUtilization, statistic: Average, days: 14, op: lt, value: 5}
    action: stop
    mode: auto
  - name: delete-unattached
    resource: ebs
    filters: [unattached]
    action: {type: delete, backup: true}
    mode: approval
"""


@dataclass
class Account:
    endpoint: str
    idle: str
    prod: str
    opted_out: str
    busy: str
    loose_volume: str

    def ec2(self) -> Any:
        return client(self.endpoint, "ec2", "us-east-1")

    def instance_state(self, iid: str) -> str:
        r = self.ec2().describe_instances(InstanceIds=[iid])
        return str(r["Reservations"][0]["Instances"][0]["State"]["Name"])

    def volume_exists(self, vid: str) -> bool:
        return any(v["VolumeId"] == vid for v in self.ec2().describe_volumes()["Volumes"])


def seed(endpoint: str) -> Account:
    ec2 = client(endpoint, "ec2", "us-east-1")
    cw = client(endpoint, "cloudwatch", "us-east-1")
    ami = MOTO_LINUX_AMI
    ids = {}
    for name, tags, cpu in (
        ("idle", {"env": "dev"}, 2.0),
        ("prod", {"env": "Prod"}, 1.0),
        ("opted_out", {"env": "dev", "finops:opt-out": "yes"}, 1.0),
        ("busy", {"env": "dev"}, 60.0),
    ):
        r = ec2.run_instances(
            ImageId=ami,
            MinCount=1,
            MaxCount=1,
            InstanceType="m5.large",
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ],
        )
        iid = r["Instances"][0]["InstanceId"]
        ids[name] = iid
        now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        cw.put_metric_data(
            Namespace="AWS/EC2",
            MetricData=[
                {
                    "MetricName": "CPUUtilization",
                    "Value": cpu,
                    "Unit": "Percent",
                    "Dimensions": [{"Name": "InstanceId", "Value": iid}],
                    "Timestamp": now - dt.timedelta(days=d + 1),
                }
                for d in range(14)
            ],
        )
    volume = ec2.create_volume(
        AvailabilityZone="us-east-1a",
        Size=50,
        VolumeType="gp3",
        TagSpecifications=[
            {"ResourceType": "volume", "Tags": [{"Key": "owner", "Value": "team-a"}]}
        ],
    )["VolumeId"]
    return Account(endpoint, ids["idle"], ids["prod"], ids["opted_out"], ids["busy"], volume)


def pack() -> PolicyPack:
    return load_text(PACK, "execution-test.yml")


def scan_and_plan(requested_by: str = "planner") -> PlanResult:
    upgrade()
    ScanService(get_settings()).run(pack=pack(), regions=["us-east-1"])
    with session_scope() as session:
        return ActionPlanner().plan(session, pack(), requested_by=requested_by)


def actions() -> dict[str, ActionRow]:
    """Every action, by the id of the resource it acts on."""
    with session_scope() as session:
        return {r.resource_id: r for r in session.scalars(select(ActionRow))}


def engine(**kw: Any) -> ActionEngine:
    return ActionEngine(pack=pack(), **kw)
