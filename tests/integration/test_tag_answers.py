"""Tag answers that leave a resource out are "tags unknown", never "no tags".

In-process moto with botocore after-call hooks that strip one answer: a DescribeTags 200
without the load balancer's entry, a DescribeDBInstances without TagList. Read as "no
tags", the opt-out and env=prod tags would be ignored; the scan's part must fail instead,
and the fresh describe before execution must block (fail closed) and keep the resource.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import select

from backend.config import get_settings, reset_settings_cache
from backend.core.action_engine import ActionEngine
from backend.core.action_planner import ActionPlanner
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import ActionRow
from backend.core.scan_service import ScanOutcome, ScanService
from backend.domain.policy import load_text
from backend.domain.policy.model import PolicyPack
from backend.providers.aws.describe import UnknownTagsError
from backend.providers.aws.operations_base import KEY_TAG, OperationContext
from backend.providers.aws.operations_elb import _tags_of
from backend.providers.aws.session import AccountTarget, AwsClients

OWN = "123456789012"  # moto's account
PROTECTING = [{"Key": "finops:opt-out", "Value": "yes"}, {"Key": "env", "Value": "prod"}]

# No tag filter: only the opt-out and protected-tag rules stand between these and AWS.
PACK = """
policies:
  - name: delete-albs
    resource: elb
    filters: [{Type: application}]
    action: delete
    mode: approval
    notice: {notify: false}
  - name: stop-postgres
    resource: rds
    filters: [{Engine: postgres}]
    action: stop
    mode: approval
    notice: {notify: false}
"""


class Stripper:
    """Removes the tags from the answers of DescribeTags and DescribeDBInstances while on."""

    def __init__(self) -> None:
        self.on = False
        self.arns_with = ""  # strip only the DescribeTags entries of ARNs holding this
        self.session = boto3.session.Session()
        self.session.events.register("after-call.*.DescribeTags", self._tags)
        self.session.events.register("after-call.*.DescribeDBInstances", self._dbs)

    def _tags(self, parsed: dict[str, Any], **_: Any) -> None:
        if self.on:  # a 200 answer with no entry for the ARN asked
            parsed["TagDescriptions"] = [
                d for d in parsed["TagDescriptions"] if self.arns_with not in d["ResourceArn"]
            ]

    def _dbs(self, parsed: dict[str, Any], **_: Any) -> None:
        if self.on:
            for db in parsed.get("DBInstances", []):
                db.pop("TagList", None)


@pytest.fixture
def stripper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Stripper]:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'tags.sqlite'}")
    monkeypatch.setenv("FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN", "100")
    monkeypatch.setenv("FINOPS_DRY_RUN", "false")
    reset_settings_cache()
    with mock_aws():
        upgrade()
        yield Stripper()
    reset_settings_cache()


def pack() -> PolicyPack:
    return load_text(PACK, "tags.yml")


def make_alb(tags: list[dict[str, str]]) -> str:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if s["VpcId"] == vpc]
    elbv2 = boto3.client("elbv2", region_name="us-east-1")
    created = elbv2.create_load_balancer(Name="web", Subnets=subnets[:2], Type="application")
    arn = str(created["LoadBalancers"][0]["LoadBalancerArn"])
    if tags:
        elbv2.add_tags(ResourceArns=[arn], Tags=tags)
    return arn


def alb_exists(arn: str) -> bool:
    found = boto3.client("elbv2", region_name="us-east-1").describe_load_balancers()
    return arn in [lb["LoadBalancerArn"] for lb in found["LoadBalancers"]]


def make_db(tags: list[dict[str, str]]) -> str:
    boto3.client("rds", region_name="us-east-1").create_db_instance(
        DBInstanceIdentifier="db1",
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        MasterUsername="u",
        MasterUserPassword="p4ssword123",
        AllocatedStorage=20,
        Tags=tags,
    )
    return "db1"


def db_status(name: str) -> str:
    rds = boto3.client("rds", region_name="us-east-1")
    return str(
        rds.describe_db_instances(DBInstanceIdentifier=name)["DBInstances"][0]["DBInstanceStatus"]
    )


def scan(stripper: Stripper) -> ScanOutcome:
    clients = AwsClients(base_session=stripper.session)
    return ScanService(get_settings(), clients=clients).run(pack=pack(), regions=["us-east-1"])


def planned() -> dict[str, int]:
    with session_scope() as session:
        ActionPlanner().plan(session, pack(), requested_by="planner")
        return {r.resource_id: r.id for r in session.scalars(select(ActionRow))}


@pytest.mark.parametrize(("kind", "make"), [("elb", make_alb), ("rds", make_db)])
def test_a_scan_without_the_tags_fails_the_part_and_plans_nothing(
    stripper: Stripper, kind: str, make: Any
) -> None:
    rid = make(PROTECTING)
    stripper.on = True

    outcome = scan(stripper)

    assert "tags are unknown" in outcome.discovery.failures[f"{OWN}/us-east-1/{kind}"]
    assert rid not in [r.resource_id for r in outcome.discovery.resources]
    assert rid not in planned()


@pytest.mark.parametrize(
    ("make", "still_there"),
    [
        (make_alb, alb_exists),
        (make_db, lambda name: db_status(name) == "available"),
    ],
)
def test_a_fresh_describe_without_the_tags_blocks_and_keeps_the_resource(
    stripper: Stripper, make: Any, still_there: Any
) -> None:
    rid = make([])
    action = planned_after_scan(stripper)[rid]
    # The owner opts out after approval; the describe before execution must not miss it.
    tag_in_aws(rid)
    stripper.on = True

    engine = ActionEngine(pack=pack(), clients=AwsClients(base_session=stripper.session))
    outcome = engine.execute([action], dry_run=False, triggered_by="test").outcomes[0]

    assert outcome.result == "blocked"
    assert "fail-closed" in outcome.detail and "tags are unknown" in outcome.detail
    stripper.on = False
    assert still_there(rid)


def planned_after_scan(stripper: Stripper) -> dict[str, int]:
    assert scan(stripper).discovery.complete
    actions = planned()
    with session_scope() as session:
        for action in actions.values():
            ActionPlanner().approve(session, action, "alice")
    return actions


def tag_in_aws(rid: str) -> None:
    if rid.startswith("arn:"):
        boto3.client("elbv2", region_name="us-east-1").add_tags(ResourceArns=[rid], Tags=PROTECTING)
    else:
        rds = boto3.client("rds", region_name="us-east-1")
        arn = rds.describe_db_instances(DBInstanceIdentifier=rid)["DBInstances"][0]["DBInstanceArn"]
        rds.add_tags_to_resource(ResourceName=arn, Tags=PROTECTING)


def forward_to_target_group(lb_arn: str) -> str:
    """A listener of the load balancer forwarding to a tagged target group; its ARN."""
    elbv2 = boto3.client("elbv2", region_name="us-east-1")
    vpc = boto3.client("ec2", region_name="us-east-1").describe_vpcs()["Vpcs"][0]["VpcId"]
    group = elbv2.create_target_group(
        Name="web", Protocol="HTTP", Port=80, VpcId=vpc, Tags=[{"Key": "team", "Value": "a"}]
    )["TargetGroups"][0]["TargetGroupArn"]
    elbv2.create_listener(
        LoadBalancerArn=lb_arn,
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": group}],
    )
    return str(group)


def test_a_target_group_left_out_of_describe_tags_fails_the_backup_and_keeps_the_alb(
    stripper: Stripper,
) -> None:
    arn = make_alb([])
    forward_to_target_group(arn)
    action = planned_after_scan(stripper)[arn]
    # The load balancer's own tags still come back: only the backup's read of the group's
    # tags is left out. Saved as "no tags", the undo would recreate the group without them.
    stripper.on, stripper.arns_with = True, ":targetgroup/"

    engine = ActionEngine(pack=pack(), clients=AwsClients(base_session=stripper.session))
    outcome = engine.execute([action], dry_run=False, triggered_by="test").outcomes[0]

    assert outcome.result == "failed", outcome.detail
    assert "tags are unknown" in outcome.detail
    stripper.on = False
    assert alb_exists(arn)


def test_an_arn_left_out_of_describe_tags_has_unknown_tags_for_the_undo(
    stripper: Stripper,
) -> None:
    """The undo's owner-mark check reads a same-named load balancer's tags this way."""
    arn = make_alb([{"Key": KEY_TAG, "Value": "mine"}])
    clients = AwsClients(base_session=stripper.session)
    ctx = OperationContext(
        client_for=lambda service: clients.client(AccountTarget(OWN), service, "us-east-1"),
        account_id=OWN,
        region="us-east-1",
        idempotency_key="k",
    )
    assert _tags_of(ctx, arn)[KEY_TAG] == "mine"
    stripper.on = True
    with pytest.raises(UnknownTagsError, match="tags are unknown"):
        _tags_of(ctx, arn)
