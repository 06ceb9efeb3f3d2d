"""Safety invariants through the whole engine, on random accounts, policies and limits.

Each example builds an account in moto (mock_aws), scans it, plans, approves what waits
for approval, and executes twice for real. Whatever hypothesis draws:
- no protected or opted-out resource is ever claimed, and each is untouched in AWS;
- no run claims more than any limit allows (per run, per hour, per kind's share of the
  fleet, per policy), and a run over a limit claims nothing at all;
- every executed action has its pre-state, its backup where it deletes, and its audit events,
  and the audit chain verifies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from sqlalchemy import select

from backend.config import get_settings, reset_settings_cache
from backend.core.action_engine import ActionEngine
from backend.core.action_planner import ActionPlanner
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import dispose_engines, session_scope
from backend.core.migrations import upgrade
from backend.core.models import ActionRow, ActionRunRow
from backend.core.scan_service import ScanService
from backend.domain.policy.loader import load_text
from tests.integration.aws_fleet import MOTO_LINUX_AMI

ENV_VALUES = ["prod", "PROD", "production", "dev", "staging", None]
PROTECTED = {"prod", "production"}
OPT_OUT = "finops:opt-out"


@dataclass(frozen=True)
class Thing:
    env: str | None
    opted_out: bool

    @property
    def protected(self) -> bool:
        return self.opted_out or (self.env or "").casefold() in PROTECTED

    def tags(self) -> list[dict[str, str]]:
        tags = [{"Key": "env", "Value": self.env}] if self.env else []
        return tags + ([{"Key": OPT_OUT, "Value": "yes"}] if self.opted_out else [])


@dataclass(frozen=True)
class Limits:
    per_run: int
    per_hour: int
    percent: float
    policy_count: int | None
    policy_percent: float | None


things = st.builds(Thing, st.sampled_from(ENV_VALUES), st.booleans())
limits = st.builds(
    Limits,
    st.integers(1, 12),
    st.integers(1, 20),
    st.sampled_from([10.0, 25.0, 50.0, 100.0]),
    st.none() | st.integers(1, 6),
    st.none() | st.sampled_from([20.0, 50.0, 100.0]),
)


def pack_text(lim: Limits, stop_mode: str, env_filter: str | None) -> str:
    """Policies deliberately do not exclude production: the safety rules must spare it."""
    policy_limits = []
    if lim.policy_count is not None:
        policy_limits.append(f"max-actions-per-run: {lim.policy_count}")
    if lim.policy_percent is not None:
        policy_limits.append(f"max-percent-of-fleet: {lim.policy_percent}")
    limit_line = f"    limits: {{{', '.join(policy_limits)}}}\n" if policy_limits else ""
    env_line = f'      - "tag:env": {env_filter}\n' if env_filter else ""
    return (
        "policies:\n"
        "  - name: stop-running\n    resource: ec2\n    filters:\n"
        '      - "State.Name": running\n'
        f"{env_line}    action: stop\n    mode: {stop_mode}\n{limit_line}"
        "  - name: delete-unattached\n    resource: ebs\n    filters: [unattached]\n"
        f"    action: {{type: delete, backup: true}}\n    mode: auto\n{limit_line}"
    )


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FINOPS_REGIONS", "us-east-1")
    return tmp_path


def configure(workdir: Path, n: int, lim: Limits) -> None:
    db = workdir / f"example-{n}.sqlite"
    os.environ["DATABASE_URL"] = f"sqlite:///{db}"
    os.environ["FINOPS_MAX_ACTIONS_PER_RUN"] = str(lim.per_run)
    os.environ["FINOPS_MAX_ACTIONS_PER_HOUR"] = str(lim.per_hour)
    os.environ["FINOPS_MAX_PERCENT_OF_FLEET_PER_RUN"] = str(lim.percent)
    dispose_engines()
    reset_settings_cache()
    upgrade()


def build(instances: list[Thing], volumes: list[Thing]) -> tuple[dict[str, Thing], list[str]]:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ami = MOTO_LINUX_AMI
    made: dict[str, Thing] = {}
    for thing in instances:
        spec = [{"ResourceType": "instance", "Tags": thing.tags()}] if thing.tags() else []
        run = ec2.run_instances(
            ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro", TagSpecifications=spec
        )
        made[run["Instances"][0]["InstanceId"]] = thing
    for thing in volumes:
        spec = [{"ResourceType": "volume", "Tags": thing.tags()}] if thing.tags() else []
        vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8, TagSpecifications=spec)
        made[vol["VolumeId"]] = thing
    return made, [i for i in made if i.startswith("i-")]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@settings(
    max_examples=int(os.environ.get("FINOPS_PROPERTY_EXAMPLES", "12")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    instances=st.lists(things, min_size=1, max_size=8),
    volumes=st.lists(things, max_size=6),
    lim=limits,
    stop_mode=st.sampled_from(["auto", "approval"]),
    env_filter=st.sampled_from([None, "present", "prod", "dev"]),
)
def test_engine_never_breaks_an_invariant(
    workdir: Path,
    instances: list[Thing],
    volumes: list[Thing],
    lim: Limits,
    stop_mode: str,
    env_filter: str | None,
) -> None:
    configure(workdir, len(list(workdir.iterdir())), lim)
    pack = load_text(pack_text(lim, stop_mode, env_filter), "random.yml")
    with mock_aws():
        made, instance_ids = build(instances, volumes)
        ec2 = boto3.client("ec2", region_name="us-east-1")
        # the fleet the percentages are of: each instance brings its root volume too
        fleet = {"ec2": len(instance_ids), "ebs": len(ec2.describe_volumes()["Volumes"])}
        ScanService(get_settings()).run(pack=pack, regions=["us-east-1"])
        with session_scope() as session:
            planner = ActionPlanner()
            planner.plan(session, pack, requested_by="planner")
            waiting = select(ActionRow).where(ActionRow.state == "awaiting_approval")
            for row in list(session.scalars(waiting)):
                planner.approve(session, row.id, "approver")
        engine = ActionEngine(pack=pack)
        reports = [engine.execute(dry_run=False, triggered_by="property") for _ in range(2)]
        states = {
            i["InstanceId"]: i["State"]["Name"]
            for r in ec2.describe_instances(InstanceIds=instance_ids)["Reservations"]
            for i in r["Instances"]
        }
        volumes_left = {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
        found = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
        snapshots = {snap["SnapshotId"] for snap in found}

    with session_scope() as session:
        rows = list(session.scalars(select(ActionRow)))
        runs = {r.id: r for r in session.scalars(select(ActionRunRow))}
    claimed = [r for r in rows if r.claimed_at is not None]

    # 1. protected and opted-out resources: never claimed, untouched in AWS
    for rid, thing in made.items():
        if thing.protected:
            assert rid not in {r.resource_id for r in claimed}, (rid, thing)
            assert states.get(rid, "running") == "running" if rid.startswith("i-") else True
            assert rid in volumes_left if rid.startswith("vol-") else True

    # 2. blast radius, per run: within every limit, or nothing claimed at all
    for report in reports:
        in_run = [r for r in claimed if r.run_id == report.run_id]
        if report.stopped_by:
            assert in_run == [], report.stopped_by
            continue
        assert len(in_run) <= lim.per_run
        for kind, total in fleet.items():
            of_kind = [r for r in in_run if r.kind == kind]
            assert len(of_kind) <= total * lim.percent / 100 + 1e-9
            if lim.policy_count is not None:
                assert len(of_kind) <= lim.policy_count
            if lim.policy_percent is not None:
                assert len(of_kind) <= total * lim.policy_percent / 100 + 1e-9
        assert report.run_id in runs
    assert len(claimed) <= lim.per_hour

    # 3. every executed action: pre-state, backup for a delete, audit events; chain verifies
    events = AuditLogger().events("1h")
    for row in claimed:
        outcomes = {e.outcome for e in events if e.subject_id == str(row.id)}
        assert "claimed" in outcomes
        if row.state == "succeeded":
            assert row.pre_state and "pre-state recorded" in outcomes and "succeeded" in outcomes
            if row.action == "delete":
                assert row.backup_ref in snapshots and row.resource_id not in volumes_left
            else:
                assert states[row.resource_id] in ("stopping", "stopped")
    assert AuditLogger().verify().ok
