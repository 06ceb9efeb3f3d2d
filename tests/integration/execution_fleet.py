"""execution_support's account, with as many idle instances as a test needs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backend.config import reset_settings_cache
from tests.integration.aws_fleet import MOTO_LINUX_AMI, client
from tests.integration.execution_support import PACK, Account, scan_and_plan


@dataclass
class Fleet(Account):
    idle_ids: list[str] = field(default_factory=list)  # every idle instance, `idle` first


def seed_fleet(endpoint: str, *, idle: int = 1) -> Fleet:
    """`idle` idle dev instances, one prod, one opted-out, one busy, one loose volume."""
    ec2 = client(endpoint, "ec2", "us-east-1")
    cw = client(endpoint, "cloudwatch", "us-east-1")
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)

    def instance(tags: dict[str, str], cpu: float) -> str:
        made = ec2.run_instances(
            ImageId=MOTO_LINUX_AMI,
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
        iid = str(made["Instances"][0]["InstanceId"])
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
        return iid

    idle_ids = [instance({"env": "dev", "n": str(n)}, 2.0) for n in range(idle)]
    prod = instance({"env": "Prod"}, 1.0)
    opted_out = instance({"env": "dev", "finops:opt-out": "yes"}, 1.0)
    busy = instance({"env": "dev"}, 60.0)
    volume = ec2.create_volume(
        AvailabilityZone="us-east-1a",
        Size=50,
        VolumeType="gp3",
        TagSpecifications=[
            {"ResourceType": "volume", "Tags": [{"Key": "owner", "Value": "team-a"}]}
        ],
    )["VolumeId"]
    return Fleet(endpoint, idle_ids[0], prod, opted_out, busy, str(volume), idle_ids)


def live_fleet(
    moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, idle: int, **env: str
) -> Fleet:
    """A seeded fleet, scanned and planned under the execution test pack read from a file
    (the workers read it in their own processes), live, any share of the fleet, and these
    FINOPS_ settings."""
    pack_file = tmp_path / "pack.yml"
    pack_file.write_text(PACK)
    monkeypatch.setenv("FINOPS_POLICY_PATHS", str(pack_file))
    monkeypatch.setenv("FINOPS_DRY_RUN", "false")
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "100")
    for name, value in env.items():
        monkeypatch.setenv(f"FINOPS_{name}", value)
    reset_settings_cache()
    fleet = seed_fleet(moto_url, idle=idle)
    scan_and_plan(requested_by="planner")
    return fleet
