"""The IAM policy the automation needs, generated from the action registry: least privilege.

    python -m backend.providers.aws.iam_policy                      # every action there is
    python -m backend.providers.aws.iam_policy --policies policies/ # only what a pack uses
    python -m backend.providers.aws.iam_policy --assume-role-name finops-cost-optimization

The permission policy has one statement that only reads (the inventory's describes, the
metrics, the safety checks' dependency and protection lookups, the rollback triggers' alarms)
and one statement per action with what the action registry (backend/domain/policy/actions.py)
says it calls: the change, the backup taken first and the undo. Attach it to the role the
automation works as: the role of COST_OPTIMIZATION_ROLE_ARN (or FINOPS_ROLE_NAME) in each
account, or the pod's own role when no role is assumed. The assume-role policy is for the
pod's role (IAM roles for service accounts) when it assumes a role in each account.

deploy/kubernetes/iam/*.json are this module's output, checked by a test that regenerates
them, so they cannot drift from the registry.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from backend.domain.policy.actions import ACTIONS, ActionSpec, iam_permissions_for
from backend.domain.policy.model import Mode, PolicyPack
from backend.domain.resources import ResourceKind

K = ResourceKind
POLICY_VERSION = "2012-10-17"
DEFAULT_ROLE_NAME = "finops-cost-optimization"
# IAM's limit on a managed policy, whitespace not counted.
MANAGED_POLICY_MAX_CHARS = 6144

# Reads, whatever the actions: describes for the inventory and the fresh describe before each
# action (describe.py, operations_base.fresh), metrics (metrics.py), the safety checks'
# lookups (dependencies.py: Auto Scaling membership, stop and termination protection, load
# balancer targets, volume attachments, AMIs that use a snapshot, launch templates and
# configurations that use an AMI), a volume's modification
# state (operations_storage.py), a load balancer's configuration before it is deleted
# (operations_elb.py), and the alarms of the rollback triggers (rollback_triggers.py).
# sts:GetCallerIdentity needs no permission, so it is not listed.
READ_ONLY: tuple[str, ...] = (
    "autoscaling:DescribeAutoScalingInstances",
    "autoscaling:DescribeLaunchConfigurations",
    "cloudwatch:DescribeAlarms",
    "cloudwatch:GetMetricData",
    "ec2:DescribeAddresses",
    "ec2:DescribeImages",
    "ec2:DescribeInstanceAttribute",
    "ec2:DescribeInstances",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:DescribeLaunchTemplates",
    "ec2:DescribeSnapshots",
    "ec2:DescribeVolumes",
    "ec2:DescribeVolumesModifications",
    "elasticloadbalancing:DescribeListeners",
    "elasticloadbalancing:DescribeLoadBalancerAttributes",
    "elasticloadbalancing:DescribeLoadBalancers",
    "elasticloadbalancing:DescribeRules",
    "elasticloadbalancing:DescribeTags",
    "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:DescribeTargetHealth",
    "rds:DescribeDBInstances",
)

# Calls the AWS operations make that the registry does not declare (yet): without them the
# undo fails with AccessDenied. Each entry goes once the registry declares it; a test fails
# while an entry here is already declared there.
#   release on an Elastic IP: ReleaseAddress.undo allocates the address again (with tags),
#     though the registry gives `release` no inverse.
#   delete on a load balancer: recreate-load-balancer also creates the target groups and
#     registers their targets (operations_elb._Rebuild).
#   terminate on an instance: restore-from-ami stops the relaunched instance when it was
#     stopped before (operations_ec2.TerminateInstance.undo).
REGISTRY_GAPS: Mapping[tuple[str, ResourceKind], tuple[str, ...]] = {
    ("release", K.ELASTIC_IP): ("ec2:AllocateAddress", "ec2:CreateTags"),
    ("delete", K.LOAD_BALANCER): (
        "elasticloadbalancing:CreateTargetGroup",
        "elasticloadbalancing:RegisterTargets",
    ),
    ("terminate", K.EC2_INSTANCE): ("ec2:StopInstances",),
}

# restore-from-ami relaunches an instance with its instance profile: IAM asks for PassRole on
# the profile's role, and only towards EC2.
PASS_ROLE_STATEMENT: dict[str, Any] = {
    "Sid": "PassInstanceProfileRoleOnRestore",
    "Effect": "Allow",
    "Action": ["iam:PassRole"],
    "Resource": "*",
    "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
}
PASS_ROLE_USES = frozenset({("terminate", K.EC2_INSTANCE)})

Use = tuple[ResourceKind, ActionSpec]


def changing_actions() -> list[str]:
    """The actions a policy may name that change something, in the registry's order."""
    return [name for name, a in ACTIONS.items() if a.changes and not a.undo_only]


def uses_of_registry() -> dict[str, list[Use] | None]:
    """Every changing action on every kind it applies to (None: all of them, backups on)."""
    return {name: None for name in changing_actions()}


def uses_of_pack(pack: PolicyPack) -> dict[str, list[Use] | None]:
    """The (kind, action) pairs the pack's enabled, acting policies use, by action name."""
    found: dict[str, list[Use]] = {}
    for policy in pack.enabled():
        if policy.mode is Mode.REPORT or not policy.action.type.changes:
            continue
        uses = found.setdefault(policy.action.name, [])
        if (policy.kind, policy.action) not in uses:
            uses.append((policy.kind, policy.action))
    result: dict[str, list[Use] | None] = {name: uses for name, uses in found.items()}
    return result


def statement_id(action: str) -> str:
    return "Action" + "".join(part.capitalize() for part in action.split("-"))


def _pairs(name: str, uses: list[Use] | None) -> set[tuple[str, ResourceKind]]:
    kinds = ACTIONS[name].rules if uses is None else [kind for kind, _ in uses]
    return {(name, kind) for kind in kinds}


def action_permissions(name: str, uses: list[Use] | None = None) -> list[str]:
    """What the action calls that only reads do not cover: its change, backup and undo."""
    needed = set(iam_permissions_for([name] if uses is None else uses))
    for pair in _pairs(name, uses):
        needed.update(REGISTRY_GAPS.get(pair, ()))
    return sorted(needed - set(READ_ONLY))


def permission_policy(uses: Mapping[str, list[Use] | None] | None = None) -> dict[str, Any]:
    """The policy document: reads, then one statement per action (registry order)."""
    uses = uses_of_registry() if uses is None else uses
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ReadInventoryMetricsAndSafetyChecks",
            "Effect": "Allow",
            "Action": sorted(READ_ONLY),
            "Resource": "*",
        }
    ]
    pairs: set[tuple[str, ResourceKind]] = set()
    for name in [n for n in ACTIONS if n in uses]:
        permissions = action_permissions(name, uses[name])
        pairs |= _pairs(name, uses[name])
        if permissions:
            statements.append(
                {
                    "Sid": statement_id(name),
                    "Effect": "Allow",
                    "Action": permissions,
                    "Resource": "*",
                }
            )
    if pairs & PASS_ROLE_USES:
        statements.append(dict(PASS_ROLE_STATEMENT))
    return {"Version": POLICY_VERSION, "Statement": statements}


def assume_role_policy(role_name: str = DEFAULT_ROLE_NAME) -> dict[str, Any]:
    """For the pod's role: assume the automation's role (by name) in any listed account."""
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {
                "Sid": "AssumeCostOptimizationRoleInEachAccount",
                "Effect": "Allow",
                "Action": ["sts:AssumeRole"],
                "Resource": f"arn:aws:iam::*:role/{role_name}",
            }
        ],
    }


def granted(document: Mapping[str, Any]) -> set[str]:
    """Every IAM action a policy document allows."""
    found: set[str] = set()
    for statement in document["Statement"]:
        actions = statement["Action"]
        found.update([actions] if isinstance(actions, str) else actions)
    return found


def render(document: Mapping[str, Any]) -> str:
    """The committed form: two-space JSON, a newline at the end."""
    return json.dumps(document, indent=2) + "\n"


def compact_size(document: Mapping[str, Any]) -> int:
    """Characters IAM counts against its size limit (whitespace is not counted)."""
    return len(json.dumps(document, separators=(",", ":")))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--policies",
        type=Path,
        action="append",
        help="only what this pack's enabled policies use (file or directory; repeatable)",
    )
    parser.add_argument(
        "--assume-role-name",
        metavar="NAME",
        help="print the pod role's assume-role policy for this role name instead",
    )
    parser.add_argument("--out", type=Path, help="write here instead of standard output")
    args = parser.parse_args(argv)
    if args.assume_role_name:
        document = assume_role_policy(args.assume_role_name)
    else:
        document = permission_policy(_pack_uses(args.policies) if args.policies else None)
    text = render(document)
    if compact_size(document) > MANAGED_POLICY_MAX_CHARS:
        print(
            f"warning: {compact_size(document)} characters, over IAM's managed policy limit "
            f"of {MANAGED_POLICY_MAX_CHARS}",
            file=sys.stderr,
        )
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _pack_uses(paths: Iterable[Path]) -> dict[str, list[Use] | None]:
    from backend.domain.policy.loader import load_pack

    return uses_of_pack(load_pack(list(paths)))


if __name__ == "__main__":
    sys.exit(main())
