"""The IAM policy, generated from the action registry: the committed files, and least privilege
checked against the AWS calls the code makes (read from the source, named by botocore)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import boto3
import pytest
from botocore import xform_name

from backend.domain.policy import load_text
from backend.domain.policy.actions import ACTIONS, iam_permissions_for
from backend.domain.resources import ResourceKind
from backend.providers.aws import iam_policy
from backend.providers.aws.iam_policy import (
    MANAGED_POLICY_MAX_CHARS,
    PASS_ROLE_STATEMENT,
    READ_ONLY,
    REGISTRY_GAPS,
    assume_role_policy,
    compact_size,
    granted,
    permission_policy,
    render,
    uses_of_pack,
)

ROOT = Path(__file__).resolve().parents[3]
IAM_DIR = ROOT / "deploy" / "kubernetes" / "iam"
COMMITTED = IAM_DIR / "finops-automation-policy.json"
COMMITTED_ASSUME = IAM_DIR / "finops-pod-assume-role-policy.json"
# boto3 service name -> IAM prefix, for every service the code calls
SERVICES = {
    "autoscaling": "autoscaling",
    "cloudwatch": "cloudwatch",
    "ec2": "ec2",
    "elbv2": "elasticloadbalancing",
    "rds": "rds",
    "sts": "sts",
}
# Needs no permission (AWS answers it for any identity).
NO_PERMISSION_NEEDED = {"sts:GetCallerIdentity"}
# Granted without an API call of that name: IAM checks it when RunInstances passes a role.
NOT_AN_API_CALL = {"iam:PassRole"}


def operations_called() -> dict[str, set[str]]:
    """IAM action -> the files that call it: every name in the code of the AWS layer and the
    core services that is a boto3 operation of a service the code uses."""
    session = boto3.session.Session(region_name="us-east-1")
    by_name: dict[str, list[str]] = {}
    for service, prefix in SERVICES.items():
        for operation in session._session.get_service_model(service).operation_names:
            by_name.setdefault(xform_name(operation), []).append(f"{prefix}:{operation}")
    called: dict[str, set[str]] = {}
    sources = [*(ROOT / "backend" / "providers" / "aws").glob("*.py")]
    sources += (ROOT / "backend" / "core").glob("*.py")
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value
            elif isinstance(node, ast.Attribute):
                name = node.attr
            else:
                continue
            for action in by_name.get(name, ()):
                called.setdefault(action, set()).add(path.name)
    return called


def test_the_committed_policies_are_what_the_registry_generates() -> None:
    """Regenerate with: python -m backend.providers.aws.iam_policy --out <file>."""
    assert COMMITTED.read_text(encoding="utf-8") == render(permission_policy())
    expected = render(assume_role_policy("finops-cost-optimization"))
    assert COMMITTED_ASSUME.read_text(encoding="utf-8") == expected


def test_every_aws_call_of_the_code_is_granted() -> None:
    called = operations_called()
    assert "ec2:StopInstances" in called and "cloudwatch:GetMetricData" in called  # it reads
    allowed = granted(permission_policy()) | granted(assume_role_policy())
    missing = {}
    for action, files in called.items():
        # a name that several services share counts once one of them is granted
        twins = {a for a, f in called.items() if a.split(":")[1] == action.split(":")[1]}
        if action in NO_PERMISSION_NEEDED or twins & allowed:
            continue
        missing[action] = sorted(files)
    assert not missing, f"called but not granted: {missing}"


def test_nothing_is_granted_that_the_code_never_calls() -> None:
    called = set(operations_called())
    extra = granted(permission_policy()) - called - NOT_AN_API_CALL
    assert not extra, f"granted but never called: {sorted(extra)}"


def test_every_permission_the_registry_declares_is_granted() -> None:
    declared = set(iam_permissions_for(list(iam_policy.changing_actions())))
    assert declared <= granted(permission_policy())


def test_reads_are_separate_and_change_nothing() -> None:
    statements = permission_policy()["Statement"]
    reads = statements[0]
    assert reads["Action"] == sorted(READ_ONLY)
    verbs = {a.split(":")[1] for a in READ_ONLY}
    assert all(v.startswith(("Describe", "Get", "List")) for v in verbs)
    for statement in statements[1:]:
        assert not set(statement["Action"]) & set(READ_ONLY), statement["Sid"]


def test_one_statement_per_changing_action() -> None:
    sids = [s["Sid"] for s in permission_policy()["Statement"]]
    changing = [n for n, a in ACTIONS.items() if a.changes and not a.undo_only]
    assert "report" not in changing and "restore-volume" not in changing
    for name in changing:
        assert iam_policy.statement_id(name) in sids
    assert len(sids) == len(set(sids))
    stop = next(s for s in permission_policy()["Statement"] if s["Sid"] == "ActionStop")
    # the change and its undo (start), on the two kinds it applies to
    assert stop["Action"] == [
        "ec2:StartInstances",
        "ec2:StopInstances",
        "rds:StartDBInstance",
        "rds:StopDBInstance",
    ]


def test_registry_gaps_are_still_gaps() -> None:
    """Each supplement is something the registry does not declare yet: once it does, the
    entry must go (this fails to say so)."""
    for (action, kind), permissions in REGISTRY_GAPS.items():
        assert kind in ACTIONS[action].rules, (action, kind)
        declared = set(iam_permissions_for([action]))
        still_missing = [p for p in permissions if p not in declared]
        assert still_missing == list(permissions), f"{action} on {kind}: now declared"


def test_the_policy_fits_an_iam_managed_policy() -> None:
    assert compact_size(permission_policy()) <= MANAGED_POLICY_MAX_CHARS
    document = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert document["Version"] == "2012-10-17"
    assert all(s["Effect"] == "Allow" for s in document["Statement"])


PACK = """
policies:
  - name: stop-idle
    resource: ec2
    filters: [{"State.Name": running}]
    action: stop
    mode: auto
  - name: just-report
    resource: ebs
    filters: [unattached]
    action: delete
    mode: report
"""


def test_a_pack_narrows_the_policy_to_what_it_uses() -> None:
    document = permission_policy(uses_of_pack(load_text(PACK, "pack.yml")))
    sids = [s["Sid"] for s in document["Statement"]]
    # the report-mode policy changes nothing: no delete statement
    assert sids == ["ReadInventoryMetricsAndSafetyChecks", "ActionStop"]
    (stop,) = [s for s in document["Statement"] if s["Sid"] == "ActionStop"]
    assert stop["Action"] == ["ec2:StartInstances", "ec2:StopInstances"]  # ec2 only, no rds


def test_terminate_brings_pass_role_towards_ec2_only() -> None:
    pack = PACK.replace("action: stop", "action: terminate").replace("mode: auto", "mode: approval")
    document = permission_policy(uses_of_pack(load_text(pack, "pack.yml")))
    passes = [s for s in document["Statement"] if s["Sid"] == PASS_ROLE_STATEMENT["Sid"]]
    assert passes == [PASS_ROLE_STATEMENT]
    assert passes[0]["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    (terminate,) = [s for s in document["Statement"] if s["Sid"] == "ActionTerminate"]
    # the AMI first, the undo relaunches it (and stops it again if it was stopped)
    assert {"ec2:CreateImage", "ec2:TerminateInstances", "ec2:RunInstances"} <= set(
        terminate["Action"]
    )
    assert "ec2:StopInstances" in terminate["Action"]
    without = permission_policy(uses_of_pack(load_text(PACK, "pack.yml")))
    assert PASS_ROLE_STATEMENT["Sid"] not in [s["Sid"] for s in without["Statement"]]


def test_the_command_line_writes_the_committed_form(tmp_path: Path) -> None:
    out = tmp_path / "policy.json"
    assert iam_policy.main(["--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render(permission_policy())
    assume = tmp_path / "assume.json"
    assert iam_policy.main(["--assume-role-name", "my-role", "--out", str(assume)]) == 0
    (statement,) = json.loads(assume.read_text(encoding="utf-8"))["Statement"]
    assert statement["Action"] == ["sts:AssumeRole"]
    assert statement["Resource"] == "arn:aws:iam::*:role/my-role"


def test_the_command_line_narrows_to_a_pack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = tmp_path / "pack.yml"
    pack.write_text(PACK, encoding="utf-8")
    assert iam_policy.main(["--policies", str(pack)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [s["Sid"] for s in printed["Statement"]][1:] == ["ActionStop"]


def test_every_kind_can_be_read() -> None:
    """Each kind's describe (the inventory and the fresh describe before an action)."""
    reads = set(READ_ONLY)
    per_kind = {
        ResourceKind.EC2_INSTANCE: "ec2:DescribeInstances",
        ResourceKind.EBS_VOLUME: "ec2:DescribeVolumes",
        ResourceKind.EBS_SNAPSHOT: "ec2:DescribeSnapshots",
        ResourceKind.AMI: "ec2:DescribeImages",
        ResourceKind.ELASTIC_IP: "ec2:DescribeAddresses",
        ResourceKind.LOAD_BALANCER: "elasticloadbalancing:DescribeLoadBalancers",
        ResourceKind.RDS_INSTANCE: "rds:DescribeDBInstances",
    }
    assert set(per_kind) == set(ResourceKind)
    assert set(per_kind.values()) <= reads
