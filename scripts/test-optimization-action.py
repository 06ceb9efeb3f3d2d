#!/usr/bin/env python
"""One harmless optimization action, end to end, every step printed with its safety verdict.

    python scripts/test-optimization-action.py [--dry-run | --live] [--region us-east-1]

Without AWS credentials (and no AWS_ENDPOINT_URL) it builds a simulated account in-process
(moto) with one idle instance, one idle production instance (which the safety rules must
spare) and a busy fleet. With credentials or AWS_ENDPOINT_URL it uses the configured account.
Then: scan, plan a stop of an idle instance, judge it, and execute it in dry-run.

A dry run uses a scratch database and no Redis, so nothing is left in yours and nothing
reaches your queues or workers. The action always runs in this process, never through the
Celery queues. --live changes AWS, so it is refused unless FINOPS_DRY_RUN=false; on a
configured account it records the action in your database (with its pre-state and backup)
and prints its rollback command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

# Run from a checkout without installing: the repository root holds the `backend` package.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from backend.config import Settings

# Its filters spare nothing on purpose: protecting production is the safety rules' job.
TEST_PACK = """
policies:
  - name: runbook-test-stop-idle-ec2
    resource: ec2
    description: The runbook's test action, stop an idle instance.
    filters:
      - "State.Name": running
      - {type: metrics, name: CPUUtilization, statistic: Average, days: 14, op: lt, value: 5}
    action: stop
    mode: auto
    notice: {notify: false}
    risk: low
"""
# Unset for the simulated account: it must never reach a real endpoint, role or account.
REAL_ACCOUNT_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "FINOPS_AWS_ENDPOINT_URL",
    "AWS_PROFILE",
    "COST_OPTIMIZATION_ROLE_ARN",
    "FINOPS_ROLE_ARN",
    "FINOPS_ROLE_NAME",
    "FINOPS_ACCOUNTS",
)
BUSY_INSTANCES = 9  # one stop must stay within the default 10%-of-the-fleet blast radius


def say(step: str, text: str) -> None:
    print(f"[{step}] {text}", flush=True)


def aws_configured() -> bool:
    import boto3

    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("FINOPS_AWS_ENDPOINT_URL"):
        return True
    return boto3.session.Session().get_credentials() is not None


def seed_simulated(region: str) -> dict[str, str]:
    """Inside mock_aws(): an idle dev instance, an idle production one, a busy fleet."""
    import boto3

    ec2, cloudwatch = boto3.client("ec2", region), boto3.client("cloudwatch", region)
    # A name filter: moto answers in milliseconds instead of serialising its whole catalogue.
    linux = [{"Name": "name", "Values": ["amzn2-ami-hvm-*"]}]
    images = ec2.describe_images(Owners=["amazon"], Filters=linux)["Images"]
    image = (images or ec2.describe_images(Owners=["amazon"])["Images"])[0]["ImageId"]
    ids: dict[str, str] = {}
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    for name, env, count, cpu in (
        ("idle", "dev", 1, 1.5),
        ("prod", "prod", 1, 1.0),
        ("busy", "dev", BUSY_INSTANCES, 60.0),
    ):
        tags = [{"Key": "env", "Value": env}, {"Key": "Name", "Value": f"runbook-test-{name}"}]
        launched = ec2.run_instances(
            ImageId=image,
            MinCount=count,
            MaxCount=count,
            InstanceType="t3.medium",
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )["Instances"]
        ids[name] = launched[0]["InstanceId"]
        for instance in launched:
            dims = [{"Name": "InstanceId", "Value": instance["InstanceId"]}]
            points = [
                {
                    "MetricName": "CPUUtilization",
                    "Dimensions": dims,
                    "Value": cpu,
                    "Unit": "Percent",
                    "Timestamp": now - dt.timedelta(days=day + 1),
                }
                for day in range(14)
            ]
            cloudwatch.put_metric_data(Namespace="AWS/EC2", MetricData=points)
    return ids


def instance_state(settings: Settings, region: str, instance_id: str) -> str:
    import boto3

    ec2 = boto3.client("ec2", region_name=region, endpoint_url=settings.aws_endpoint_url)
    found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(found[0]["Instances"][0]["State"]["Name"]) if found else "gone"


def run(simulated: bool, region: str, live: bool, scratch: bool) -> int:
    from sqlalchemy import select

    from backend.config import get_settings
    from backend.core.auto_remediation_engine import AutoRemediationEngine, InProcessDispatcher
    from backend.core.database import database_url, redacted, session_scope
    from backend.core.migrations import ensure_schema
    from backend.core.models import ActionRow
    from backend.domain.policy import load_text
    from backend.providers.aws.session import AwsClients

    settings = get_settings()
    where = "a simulated account (moto, in-process)" if simulated else "the configured account"
    say("setup", f"{where}, region {region}, {'LIVE' if live else 'DRY-RUN (nothing changes)'}")
    kept = "a scratch database, removed afterwards" if scratch else "your database"
    say("setup", f"database: {redacted(database_url())} ({kept})")
    ensure_schema()
    seeded: dict[str, str] = seed_simulated(region) if simulated else {}
    if seeded:
        say("setup", f"idle dev {seeded['idle']}, idle prod {seeded['prod']}, busy fleet")
    pack = load_text(TEST_PACK, "runbook-test.yml")
    clients = AwsClients(endpoint_url=settings.aws_endpoint_url)
    # In-process: with REDIS_URL the default would queue the id for a worker, which acts on
    # whatever action has that id in the database it uses, and leaves no outcome here.
    engine = AutoRemediationEngine(pack=pack, clients=clients, dispatcher=InProcessDispatcher())

    scan = engine.scan(pack, [region])
    found = f"{len(scan.discovery.resources)} resource(s), {len(scan.opportunities)} selected"
    say("scan", f"{scan.status}: {found} by {pack.policies[0].name}")
    for part, error in {**scan.discovery.failures, **scan.metric_failures}.items():
        say("scan", f"FAILED {part}: {error}")
    if scan.status == "failed":
        return _result(False, "the scan failed")

    plan = engine.plan(pack, requested_by="test-optimization-action")
    with session_scope() as session:
        rows = {r.id: r for r in session.scalars(select(ActionRow).order_by(ActionRow.id))}
    for ident in sorted(set(plan.created) | set(plan.blocked)):
        row, why = rows[ident], plan.blocked.get(ident)
        say(
            "plan",
            f"#{ident} {row.action} {row.resource_id}: {row.state}" + f" ({why})" * bool(why),
        )
    if seeded and not any(rows[i].resource_id == seeded["prod"] for i in plan.blocked):
        return _result(False, f"the production instance {seeded['prod']} was not blocked")
    if not plan.approved:
        if simulated:
            return _result(False, "no action was approved for the idle instance")
        return _result(True, "no idle instance to test on: scan and plan worked, nothing to run")

    ident = plan.approved[0]
    row = rows[ident]
    say("judge", f"#{ident} at planning, on the stored inventory:")
    for verdict in (row.safety_verdict or {}).get("verdicts", []):
        mark = "ok     " if verdict["ok"] else "BLOCKED"
        say("judge", f"  {mark} {verdict['rule']}: {verdict['reason']}")
    report = engine.execute([ident], dry_run=not live, pack=pack, triggered_by="runbook-test")
    if report.stopped_by:
        say("execute", f"batch stopped before any claim: {report.stopped_by}")
        # On a real account a blast-radius stop is a verdict (the rules work); the emergency
        # stop, or any stop of the simulated account sized to pass, is a failure.
        verdict = not simulated and "emergency stop" not in report.stopped_by.lower()
        return _result(verdict, "the safety rules stopped the batch" if verdict else "stopped")
    if not report.outcomes:
        return _result(False, f"#{ident} did not run: no outcome (batch {report.batch})")
    outcome = report.outcomes[0]
    allowed = outcome.result in ("would-execute", "succeeded")
    verdict_text = "allowed, every rule passed on a fresh describe" if allowed else outcome.detail
    say("execute", f"#{ident} {outcome.result} (run {report.run_id}): {verdict_text}")
    state = instance_state(settings, region, row.resource_id)
    say("verify", f"{row.resource_id} is {state} in AWS" + (" (unchanged)" if not live else ""))
    if live and not simulated:
        say("verify", f"to undo it: finops actions rollback {ident}")
    if not allowed and not simulated and "fail-closed" not in outcome.detail:
        return _result(True, "the safety rules blocked it on a fresh describe (a verdict)")
    states = ("stopping", "stopped") if live else ("running",)
    if outcome.result != ("succeeded" if live else "would-execute") or state not in states:
        return _result(False, f"got {outcome.result}, and the instance is {state}")
    return _result(True, f"one {'live' if live else 'dry-run'} stop went through every step")


def _result(ok: bool, text: str) -> int:
    print(f"RESULT: {'PASS' if ok else 'FAIL'}: {text}", flush=True)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="judge, change nothing (default)")
    mode.add_argument("--live", action="store_true", help="really stop the idle instance")
    parser.add_argument("--region", help="default: the first of FINOPS_REGIONS, or us-east-1")
    args = parser.parse_args(argv)
    if args.live and os.environ.get("FINOPS_DRY_RUN", "").strip().lower() not in ("false", "0"):
        print("refused: --live changes AWS; set FINOPS_DRY_RUN=false to allow it", file=sys.stderr)
        return 2
    simulated = not aws_configured()
    scratch_dir = (
        tempfile.mkdtemp(prefix="finops-test-action-") if simulated or not args.live else None
    )
    if simulated:
        for name in REAL_ACCOUNT_VARIABLES:
            os.environ.pop(name, None)
    if scratch_dir:
        # Set before anything reads the settings: a test never writes to your database.
        os.environ["DATABASE_URL"] = f"sqlite:///{scratch_dir}/finops.db"
        os.environ["FINOPS_DATA_DIR"] = scratch_dir
        # No Redis either: no stop key, breaker state or queue shared with production.
        os.environ.pop("FINOPS_REDIS_URL", None)
        os.environ["REDIS_URL"] = ""  # also hides a REDIS_URL in a .env file

    from backend.config import SettingsError, get_settings, reset_settings_cache
    from backend.core.database import dispose_engines

    reset_settings_cache()
    try:
        region = args.region or (get_settings().regions[0] if not simulated else "us-east-1")
        if not simulated:
            return run(False, region, args.live, scratch_dir is not None)
        from moto import mock_aws

        with mock_aws():
            return run(True, region, args.live, True)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    finally:
        dispose_engines()
        if scratch_dir:
            shutil.rmtree(scratch_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
