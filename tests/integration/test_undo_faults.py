"""AWS errors around retries and rollbacks: in-process moto, with errors injected on chosen
calls by botocore event hooks on the session the engine's clients come from.

A retry after a partial change resumes it and keeps what was there before the first try; a
rollback refused by AWS is audited and does not end the rollbacks of the rest of its run; a
failed delete that never happened rolls back to "never deleted", not to "impossible".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from backend.cli.app import app
from backend.config import get_settings
from backend.core.action_engine import ActionEngine
from backend.core.action_planner import ActionPlanner
from backend.core.action_undo import NOTHING_CHANGED, UNDER_WAY
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop
from backend.core.migrations import upgrade
from backend.core.models import ActionRow
from backend.core.scan_service import ScanService
from backend.domain.policy import load_text
from backend.domain.policy.model import PolicyPack
from backend.providers.aws.session import AwsClients
from tests.integration.aws_fleet import MOTO_LINUX_AMI
from tests.support.api_client import seed_action
from tests.support.botocore_faults import Faults

PACK = """
policies:
  - name: stop-tagged
    resource: ec2
    filters: [{"tag:role": stopme}]
    action: stop
    mode: auto
    notice: {notify: false}
  - name: resize-tagged
    resource: ec2
    filters: [{"tag:role": resizeme}]
    action: {type: resize, instance-type: t3.small}
    mode: auto
    notice: {notify: false}
  - name: delete-snapshots
    resource: ebs-snapshot
    filters: [{"tag:role": delme}]
    action: delete
    mode: approval
    notice: {notify: false}
  - name: delete-volumes
    resource: ebs
    filters: [{"tag:role": delme}]
    action: {type: delete, backup: true}
    mode: approval
    notice: {notify: false}
  - name: delete-images
    resource: ami
    filters: [{"tag:role": delme}]
    action: delete
    mode: approval
    notice: {notify: false}
"""


def pack() -> PolicyPack:
    return load_text(PACK, "undo-faults.yml")


def engine(faults: Faults) -> ActionEngine:
    return ActionEngine(pack=pack(), clients=AwsClients(base_session=faults.session))


def ec2() -> Any:
    return boto3.client("ec2", region_name="us-east-1")


def launch(role: str) -> str:
    image = MOTO_LINUX_AMI
    return str(
        ec2().run_instances(
            ImageId=image,
            MinCount=1,
            MaxCount=1,
            InstanceType="m5.large",
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": "role", "Value": role}]}
            ],
        )["Instances"][0]["InstanceId"]
    )


def instance(iid: str) -> tuple[str, str]:
    found = ec2().describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return found["State"]["Name"], found["InstanceType"]


def plan(faults: Faults, policies: PolicyPack | None = None) -> dict[str, int]:
    """Scan and plan (this file's pack unless given); every action's id by its resource."""
    policies = policies or pack()
    upgrade()
    clients = AwsClients(base_session=faults.session)
    ScanService(get_settings(), clients=clients).run(pack=policies, regions=["us-east-1"])
    with session_scope() as session:
        ActionPlanner().plan(session, policies, requested_by="planner")
        return {r.resource_id: r.id for r in session.scalars(select(ActionRow))}


def row(action_id: int) -> ActionRow:
    with session_scope() as session:
        found = session.get(ActionRow, action_id)
        assert found is not None
        return found


def events(action_id: int, kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (e.outcome, e.details)
        for e in AuditLogger().events("1h")
        if e.subject_id == str(action_id) and e.event_type == kind
    ]


def cli(faults: Faults, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    """The CLI, its engines' clients on the faulty session."""
    with_faults: Callable[..., ActionEngine] = lambda **kw: ActionEngine(  # noqa: E731
        **{"clients": AwsClients(base_session=faults.session), **kw}
    )
    monkeypatch.setattr("backend.cli.actions.ActionEngine", with_faults)
    return CliRunner().invoke(app, list(args))


def test_a_retried_resize_resumes_and_its_rollback_restores_the_first_pre_state(
    faults: Faults,
) -> None:
    iid = launch("resizeme")
    action = plan(faults)[iid]
    faults.fail("StartInstances", "InsufficientInstanceCapacity")
    first = engine(faults).execute([action], dry_run=False, triggered_by="test").outcomes[0]
    assert first.result == "failed"
    assert instance(iid) == ("stopped", "t3.small")  # stopped, changed, not started
    failed = [d for outcome, d in events(action, "execution") if outcome == "failed"]
    assert failed[-1]["changed"] is True  # not "nothing happened"
    assert "partly changed" in str(row(action).error)  # stop and modify made

    assert engine(faults).retry(action, "test").result == "succeeded"
    assert instance(iid) == ("running", "t3.small")  # the start it owed, made
    kept = row(action).pre_state or {}
    assert (kept["state"], kept["attributes"]["InstanceType"]) == ("running", "m5.large")

    assert engine(faults).rollback(action, "test").result == "rolled_back"
    assert instance(iid) == ("running", "m5.large")


def test_a_retried_resize_that_fails_again_still_says_partly_changed(faults: Faults) -> None:
    iid = launch("resizeme")
    action = plan(faults)[iid]
    faults.fail("StartInstances", "InsufficientInstanceCapacity", times=2)
    engine(faults).execute([action], dry_run=False, triggered_by="test")

    assert engine(faults).retry(action, "test").result == "failed"  # its start refused again

    assert instance(iid) == ("stopped", "t3.small")
    failed = [d for outcome, d in events(action, "execution") if outcome == "failed"]
    assert [d["changed"] for d in failed] == [True, True]  # not "nothing happened" the 2nd time
    assert "partly changed" in str(row(action).error)


def test_a_retry_after_a_refused_first_call_judges_and_acts_on_the_resource_as_it_is(
    faults: Faults,
) -> None:
    """Nothing changed on the first try: the retry is a new start, not a resume. The owner
    stopped the instance meanwhile: it stays stopped, and a rollback restores that."""
    iid = launch("resizeme")
    action = plan(faults)[iid]
    faults.fail("StopInstances", "UnauthorizedOperation")
    engine(faults).execute([action], dry_run=False, triggered_by="test")
    failed = [d for outcome, d in events(action, "execution") if outcome == "failed"]
    assert failed[-1]["changed"] is False and "partly" not in str(row(action).error)
    ec2().stop_instances(InstanceIds=[iid])  # the owner's

    assert engine(faults).retry(action, "test").result == "succeeded"

    assert instance(iid) == ("stopped", "t3.small")
    assert (row(action).pre_state or {})["state"] == "stopped"
    assert engine(faults).rollback(action, "test").result == "rolled_back"
    assert instance(iid) == ("stopped", "m5.large")


def test_a_rollback_refused_by_aws_is_audited_and_the_rest_of_the_run_goes_on(
    faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = launch("stopme"), launch("stopme")
    ids = plan(faults)
    report = engine(faults).execute(None, dry_run=False, triggered_by="test")
    assert report.count("succeeded") == 2
    faults.fail("StartInstances", "AccessDenied")  # the first undo of the run only

    result = cli(faults, monkeypatch, "actions", "rollback", "--run", str(report.run_id))

    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "rollback failed after" in result.output and "AccessDenied" in result.output
    assert "rolled_back" in result.output
    assert sorted(instance(i)[0] for i in (first, second)) == ["running", "stopped"]
    refused = next(i for i in ids.values() if row(i).state == "succeeded")
    outcomes = [(o, d) for o, d in events(refused, "rollback")]
    assert outcomes[-1][0] == "failed" and "AccessDenied" in outcomes[-1][1]["error"]
    assert AuditLogger().verify().ok

    # run again, as the runbook says: the refused one is undone now
    again = cli(faults, monkeypatch, "actions", "rollback", str(refused))
    assert again.exit_code == 0, again.output
    assert [instance(i)[0] for i in (first, second)] == ["running", "running"]


def test_cli_rollback_under_the_emergency_stop_or_of_no_action_says_so(
    faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    launch("stopme")
    (action,) = plan(faults).values()
    engine(faults).execute([action], dry_run=False, triggered_by="test")
    missing = cli(faults, monkeypatch, "actions", "rollback", "999")
    EmergencyStop().engage("drill", "sre")
    stopped = cli(faults, monkeypatch, "actions", "rollback", str(action))

    assert stopped.exit_code == 1 and "EMERGENCY STOP" in stopped.output.upper()
    assert "finops resume" in stopped.output
    assert missing.exit_code == 2 and "no action 999" in missing.output
    for result in (stopped, missing):
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    assert row(action).state == "succeeded"


def test_apply_live_exits_non_zero_when_an_action_fails(
    faults: Faults, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    launch("stopme")
    plan(faults)
    faults.fail("StopInstances", "UnauthorizedOperation")
    (tmp_path / "pack.yml").write_text(PACK)

    result = cli(faults, monkeypatch, "apply", "--live", "--policies", str(tmp_path / "pack.yml"))

    assert result.exit_code == 1, result.output
    assert "UnauthorizedOperation" in result.output


def _image_of(iid: str) -> str:
    image = ec2().create_image(InstanceId=iid, Name="undo-faults")["ImageId"]
    ec2().create_tags(Resources=[image], Tags=[{"Key": "role", "Value": "delme"}])
    return str(image)


def _snapshot() -> str:
    volume = ec2().create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
    snapshot = ec2().create_snapshot(VolumeId=volume)["SnapshotId"]
    ec2().create_tags(Resources=[snapshot], Tags=[{"Key": "role", "Value": "delme"}])
    return str(snapshot)


@pytest.mark.parametrize(
    ("make", "call", "exists"),
    [
        (_snapshot, "DeleteSnapshot", lambda sid: ec2().describe_snapshots(SnapshotIds=[sid])),
        (
            lambda: _image_of(launch("keep")),
            "DeregisterImage",
            lambda image: ec2().describe_images(ImageIds=[image])["Images"][0],
        ),
    ],
    ids=["snapshot", "image"],
)
def test_a_delete_refused_by_aws_rolls_back_to_never_deleted(
    faults: Faults, make: Callable[[], str], call: str, exists: Callable[[str], Any]
) -> None:
    resource = make()
    action = plan(faults)[resource]
    with session_scope() as session:
        ActionPlanner().approve(session, action, "alice")
    faults.fail(call, "UnauthorizedOperation")
    assert engine(faults).execute([action], dry_run=False, triggered_by="t").count("failed") == 1

    calls = len(faults.calls)
    outcome = engine(faults).rollback(action, "test")

    # AWS refused the delete: the failure recorded that nothing changed, and the rollback
    # makes no call at all
    assert outcome.result == "rolled_back"
    assert outcome.detail == NOTHING_CHANGED
    assert faults.calls[calls:] == []
    assert exists(resource)
    assert [o for o, _ in events(action, "rollback")] == ["rolled_back"]


LB_PACK = """
policies:
  - name: delete-tagged-lbs
    resource: elb
    filters: [{"tag:role": delme}]
    action: delete
    mode: approval
    notice: {notify: false}
"""


def test_a_load_balancer_delete_keeps_its_whole_configuration_on_postgresql(
    faults: Faults, postgres_url: str
) -> None:
    elbv2 = boto3.client("elbv2", region_name="us-east-1")
    vpc = ec2().describe_vpcs()["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2().describe_subnets()["Subnets"] if s["VpcId"] == vpc]
    lb = elbv2.create_load_balancer(
        Name="web", Subnets=subnets[:2], Tags=[{"Key": "role", "Value": "delme"}]
    )["LoadBalancers"][0]
    group = elbv2.create_target_group(Name="web", Protocol="HTTP", Port=80, VpcId=vpc)
    elbv2.create_listener(
        LoadBalancerArn=lb["LoadBalancerArn"],
        Protocol="HTTP",
        Port=80,
        DefaultActions=[
            {"Type": "forward", "TargetGroupArn": group["TargetGroups"][0]["TargetGroupArn"]}
        ],
    )
    lbs = load_text(LB_PACK, "lb.yml")
    upgrade()
    clients = AwsClients(base_session=faults.session)
    ScanService(get_settings(), clients=clients).run(pack=lbs, regions=["us-east-1"])
    with session_scope() as session:
        ActionPlanner().plan(session, lbs, requested_by="planner")
        (action,) = [r.id for r in session.scalars(select(ActionRow))]
        ActionPlanner().approve(session, action, "alice")
    lb_engine = ActionEngine(pack=lbs, clients=clients)

    assert lb_engine.execute([action], dry_run=False, triggered_by="t").count("succeeded") == 1
    assert len(row(action).backup_ref or "") > 512  # VARCHAR(512) refused it: every delete failed
    assert elbv2.describe_load_balancers()["LoadBalancers"] == []
    assert lb_engine.rollback(action, "test").result == "rolled_back"
    (again,) = elbv2.describe_load_balancers()["LoadBalancers"]
    assert len(elbv2.describe_listeners(LoadBalancerArn=again["LoadBalancerArn"])["Listeners"]) == 1


def test_an_action_of_another_account_is_never_run_with_these_credentials(
    faults: Faults,
) -> None:
    """Planned for one account (the demo's, or one dropped from FINOPS_ACCOUNTS), run where
    the credentials act in another: a resource of the same id there is another resource."""
    iid = launch("stopme")
    action = plan(faults)[iid]
    with session_scope() as session:
        found = session.get(ActionRow, action)
        assert found is not None and found.account_id == "123456789012"  # moto's own
        found.account_id = "210987654321"

    outcome = engine(faults).execute([action], dry_run=False, triggered_by="t").outcomes[0]

    assert outcome.result == "blocked"
    assert "credentials act in account 123456789012" in outcome.detail
    assert instance(iid) == ("running", "m5.large")
    assert "StopInstances" not in faults.calls


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_second_rollback_while_one_is_under_way_is_skipped_before_it_calls_aws(
    faults: Faults, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, database: str
) -> None:
    """Two undos at once would each restore a copy (a volume from its snapshot, say): the
    second, from another process or host, finds the first's lock and calls nothing."""
    if database == "postgresql":
        request.getfixturevalue("postgres_url")
    iid = launch("stopme")
    (action,) = plan(faults).values()
    engine(faults).execute([action], dry_run=False, triggered_by="test")
    other: list[tuple[str, str]] = []

    def another_request_meanwhile(**_: Any) -> None:
        if not other:  # while this request's undo is under way
            outcome = engine(faults).rollback(action, "other")
            other.append((outcome.result, outcome.detail))

    faults.session.events.register("before-call.ec2.StartInstances", another_request_meanwhile)
    result = cli(faults, monkeypatch, "actions", "rollback", str(action))

    assert other == [("skipped", UNDER_WAY)]
    assert faults.calls.count("StartInstances") == 1  # the second undo called nothing
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"action {action}: rolled_back" in result.output
    assert row(action).state == "rolled_back" and instance(iid)[0] == "running"
    assert [o for o, _ in events(action, "rollback")] == ["rolled_back"]
    assert AuditLogger().verify().ok
    # and once it is over, the lock is free: a third request reads the state it left
    assert engine(faults).rollback(action, "third").result == "skipped"


def test_an_unreadable_pre_state_is_an_impossible_rollback_not_a_crash(faults: Faults) -> None:
    upgrade()
    action = seed_action(
        state="succeeded", kind="ec2", action="stop", pre_state={"state": "running"}
    )

    outcome = engine(faults).rollback(action, "test")

    assert outcome.result == "failed"
    assert outcome.detail.startswith("cannot undo: the recorded pre-state is unreadable")
    assert [o for o, _ in events(action, "rollback")] == ["impossible"]
    assert faults.calls == []  # nothing asked of AWS


def test_a_backup_that_fails_after_its_snapshot_was_made_is_no_change(faults: Faults) -> None:
    """A snapshot is a backup, not a change to the volume: the failure says nothing changed,
    and a retry judges and records the volume afresh."""
    volume = ec2().create_volume(
        AvailabilityZone="us-east-1a",
        Size=8,
        TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "role", "Value": "delme"}]}],
    )["VolumeId"]
    action = plan(faults)[volume]
    with session_scope() as session:
        ActionPlanner().approve(session, action, "alice")

    def refuse_reading_it_back(**_: Any) -> None:
        faults.fail("DescribeSnapshots", "UnauthorizedOperation")

    faults.session.events.register("after-call.ec2.CreateSnapshot", refuse_reading_it_back)
    assert engine(faults).execute([action], dry_run=False, triggered_by="t").count("failed") == 1

    failed = [d for outcome, d in events(action, "execution") if outcome == "failed"]
    assert failed[-1]["changed"] is False
    assert "partly" not in str(row(action).error)
    assert row(action).post_state == {"change_started": False, "nothing_changed": True}
