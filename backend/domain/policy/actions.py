"""The actions a policy may take, and what each one needs and risks on each kind.

An action's rule per kind says which states it may touch, the IAM actions it calls, whether
it destroys anything, the backup taken first and the action that undoes it. `mode: auto` is
only allowed for actions that can be undone, so these facts are the safety contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backend.domain.resources import ResourceKind

K = ResourceKind
EC2_FAMILY = (K.EC2_INSTANCE, K.EBS_VOLUME, K.EBS_SNAPSHOT, K.AMI, K.ELASTIC_IP)


class Backup(StrEnum):
    SNAPSHOT = "snapshot"  # EBS snapshot of the volume
    AMI = "ami"  # image of the instance with its volumes
    CONFIGURATION = "configuration"  # the describe output needed to recreate it
    PREVIOUS_TYPE = "previous-type"  # the type before the change, kept in the action record
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ActionRule:
    """How one action behaves on one kind."""

    states: frozenset[str] | None  # states it may act on; None: any
    permissions: tuple[str, ...]
    destructive: bool = False
    backup: Backup = Backup.NONE
    inverse: str | None = None
    backup_permissions: tuple[str, ...] = ()  # needed only while taking the backup


class ActionParams(BaseModel):
    """Parameters of an action as written in YAML (dashed keys, as Custodian writes them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def options(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


@dataclass(frozen=True, slots=True)
class ActionType:
    name: str
    rules: Mapping[ResourceKind, ActionRule]
    params: type[ActionParams]
    changes: bool = True  # False for report/notify: nothing in the account changes
    undo_only: bool = False  # an inverse step the executor runs; not for policies
    aliases: tuple[str, ...] = ()
    description: str = ""

    @property
    def kinds(self) -> frozenset[ResourceKind]:
        return frozenset(self.rules)

    def rule(self, kind: ResourceKind) -> ActionRule | None:
        return self.rules.get(kind)

    def reversible(self, kind: ResourceKind) -> bool:
        rule = self.rules.get(kind)
        return rule is not None and (not self.changes or rule.inverse is not None)


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """An action as a policy names it: canonical name plus validated parameters."""

    name: str
    params: ActionParams = field(default_factory=lambda: NoParams())

    @property
    def type(self) -> ActionType:
        return ACTIONS[self.name]

    @property
    def backup_enabled(self) -> bool:
        return bool(getattr(self.params, "backup", True))


ACTIONS: dict[str, ActionType] = {}
ALIASES: dict[str, str] = {}
P = TypeVar("P", bound=type[ActionParams])


def register_action(
    name: str,
    rules: Mapping[ResourceKind, ActionRule],
    *,
    changes: bool = True,
    undo_only: bool = False,
    aliases: tuple[str, ...] = (),
    description: str = "",
) -> Callable[[P], P]:
    def register(params: P) -> P:
        for word in (name, *aliases):
            if word in ACTIONS or word in ALIASES:
                raise ValueError(f"action {word!r} registered twice")
        ACTIONS[name] = ActionType(
            name, dict(rules), params, changes, undo_only, aliases, description
        )
        ALIASES.update({alias: name for alias in aliases})
        return params

    return register


def find_action(word: str) -> ActionType | None:
    return ACTIONS.get(ALIASES.get(word, word))


def _tagging(verbs: tuple[str, str, str], inverse: str) -> dict[ResourceKind, ActionRule]:
    ec2, elb, rds = verbs
    rules = {kind: ActionRule(None, (ec2,), inverse=inverse) for kind in EC2_FAMILY}
    rules[K.LOAD_BALANCER] = ActionRule(None, (elb,), inverse=inverse)
    rules[K.RDS_INSTANCE] = ActionRule(None, (rds,), inverse=inverse)
    return rules


@register_action(
    "report",
    {k: ActionRule(None, ()) for k in K},
    changes=False,
    aliases=("notify",),
    description="Changes nothing; lists the resource.",
)
@register_action(
    "start",
    {
        K.EC2_INSTANCE: ActionRule(frozenset({"stopped"}), ("ec2:StartInstances",), inverse="stop"),
        K.RDS_INSTANCE: ActionRule(
            frozenset({"stopped"}), ("rds:StartDBInstance",), inverse="stop"
        ),
    },
    description="Start a stopped instance or database.",
)
@register_action(
    "stop",
    {
        K.EC2_INSTANCE: ActionRule(frozenset({"running"}), ("ec2:StopInstances",), inverse="start"),
        # AWS starts a stopped database again after 7 days; the policy will stop it again
        K.RDS_INSTANCE: ActionRule(
            frozenset({"available"}), ("rds:StopDBInstance",), inverse="start"
        ),
    },
    description="Stop an instance or database; storage is kept.",
)
@register_action(
    "release",
    {
        # AWS itself refuses to release an associated VPC address; the state check is ours
        K.ELASTIC_IP: ActionRule(
            frozenset({"unassociated"}), ("ec2:ReleaseAddress",), destructive=True
        ),
    },
    description="Release an Elastic IP; the address is gone for good.",
)
class NoParams(ActionParams):
    """Actions without parameters."""


@register_action(
    "terminate",
    {
        K.EC2_INSTANCE: ActionRule(
            frozenset({"running", "stopped"}),
            ("ec2:TerminateInstances",),
            destructive=True,
            backup=Backup.AMI,
            inverse="restore-from-ami",
            backup_permissions=("ec2:CreateImage", "ec2:CreateTags"),
        ),
    },
    description="Image the instance, then terminate it.",
)
@register_action(
    "delete",
    {
        K.EBS_VOLUME: ActionRule(
            frozenset({"available"}),
            ("ec2:DeleteVolume",),
            destructive=True,
            backup=Backup.SNAPSHOT,
            inverse="restore-volume",
            backup_permissions=("ec2:CreateSnapshot", "ec2:CreateTags"),
        ),
        K.EBS_SNAPSHOT: ActionRule(
            frozenset({"completed"}), ("ec2:DeleteSnapshot",), destructive=True
        ),
        K.LOAD_BALANCER: ActionRule(
            frozenset({"active", "active_impaired", "failed"}),
            ("elasticloadbalancing:DeleteLoadBalancer",),
            destructive=True,
            backup=Backup.CONFIGURATION,
            inverse="recreate-load-balancer",
            backup_permissions=(
                "elasticloadbalancing:DescribeListeners",
                "elasticloadbalancing:DescribeRules",
                "elasticloadbalancing:DescribeLoadBalancerAttributes",
                "elasticloadbalancing:DescribeTags",
            ),
        ),
        # an AMI is deregistered; its snapshots stay and are found by orphan/old policies
        K.AMI: ActionRule(
            frozenset({"available", "failed"}), ("ec2:DeregisterImage",), destructive=True
        ),
    },
    aliases=("deregister",),
    description="Delete (after a backup where the kind has one).",
)
class BackupParams(ActionParams):
    backup: bool = True  # take the kind's backup first; `mode: auto` insists on it


@register_action(
    "modify-volume",
    {
        # AWS allows one modification per volume every 6 hours, so the inverse may have to wait
        K.EBS_VOLUME: ActionRule(
            frozenset({"available", "in-use"}),
            ("ec2:ModifyVolume",),
            backup=Backup.PREVIOUS_TYPE,
            inverse="modify-volume",
        ),
    },
    aliases=("modify",),
    description="Change a volume's type in place, e.g. gp2 to gp3.",
)
class ModifyVolumeParams(ActionParams):
    volume_type: Literal["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"] = Field(
        alias="volume-type"
    )
    iops: int | None = Field(default=None, ge=100, le=256_000)
    throughput: int | None = Field(default=None, ge=125, le=2_000)


@register_action(
    "resize",
    {
        K.EC2_INSTANCE: ActionRule(
            frozenset({"running", "stopped"}),
            ("ec2:StopInstances", "ec2:ModifyInstanceAttribute", "ec2:StartInstances"),
            backup=Backup.PREVIOUS_TYPE,
            inverse="resize",
        ),
    },
    aliases=("rightsize",),
    description="Change the instance type (stops and starts it).",
)
class ResizeParams(ActionParams):
    # None: the type the rightsizing recommendation names
    instance_type: str | None = Field(
        default=None, alias="instance-type", pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$"
    )


@register_action(
    "mark",
    _tagging(("ec2:CreateTags", "elasticloadbalancing:AddTags", "rds:AddTagsToResource"), "untag"),
    aliases=("tag",),
    description="Add a tag.",
)
class TagParams(ActionParams):
    key: str = Field(min_length=1, max_length=128)
    value: str = Field(default="", max_length=256)

    @field_validator("key")
    @classmethod
    def _not_reserved(cls, key: str) -> str:
        return _user_tag_key(key)


@register_action(
    "untag",
    _tagging(
        ("ec2:DeleteTags", "elasticloadbalancing:RemoveTags", "rds:RemoveTagsFromResource"), "mark"
    ),
    description="Remove a tag.",
)
class UntagParams(ActionParams):
    key: str = Field(min_length=1, max_length=128)

    @field_validator("key")
    @classmethod
    def _not_reserved(cls, key: str) -> str:
        return _user_tag_key(key)


def _user_tag_key(key: str) -> str:
    if key.lower().startswith("aws:"):
        raise ValueError("tag keys starting with 'aws:' are reserved by AWS")
    return key


# Undo steps: the executor runs them from the record of a change; a policy cannot name them.
@register_action(
    "restore-from-ami",
    {
        K.EC2_INSTANCE: ActionRule(
            None,
            (
                "ec2:RunInstances",
                "ec2:CreateTags",
                "ec2:ModifyInstanceAttribute",
                "ec2:AssociateAddress",
            ),
            inverse="terminate",
        ),
    },
    undo_only=True,
    description="Launch the instance again from its backup image.",
)
@register_action(
    "restore-volume",
    {
        K.EBS_VOLUME: ActionRule(None, ("ec2:CreateVolume", "ec2:CreateTags"), inverse="delete"),
    },
    undo_only=True,
    description="Create the volume again from its backup snapshot.",
)
@register_action(
    "recreate-load-balancer",
    {
        K.LOAD_BALANCER: ActionRule(
            None,
            (
                "elasticloadbalancing:CreateLoadBalancer",
                "elasticloadbalancing:CreateListener",
                "elasticloadbalancing:CreateRule",
                "elasticloadbalancing:ModifyLoadBalancerAttributes",
                "elasticloadbalancing:AddTags",
            ),
            inverse="delete",
        ),
    },
    undo_only=True,
    description="Create the load balancer again from its saved configuration.",
)
class UndoParams(ActionParams):
    """Undo steps read what they need from the action record, not from YAML."""


ActionUse = str | tuple[ResourceKind, ActionSpec]


def iam_permissions_for(actions: Iterable[ActionUse], *, include_undo: bool = True) -> list[str]:
    """The sorted union of IAM actions needed to run these actions (and undo them).

    An item is an action name (every kind it applies to, with backups) or a
    (kind, ActionSpec) pair as a policy uses it (a backup only when enabled).
    """
    needed: set[str] = set()
    for use in actions:
        if isinstance(use, str):
            action = find_action(use)
            if action is None:
                raise KeyError(f"unknown action {use!r}")
            pairs = [(kind, True) for kind in action.rules]
        else:
            kind, spec = use
            action = ACTIONS[spec.name]
            pairs = [(kind, spec.backup_enabled)]
        for kind, with_backup in pairs:
            rule = action.rules.get(kind)
            if rule is None:
                raise ValueError(f"action {action.name!r} does not apply to kind {kind.value!r}")
            needed.update(rule.permissions)
            if with_backup:
                needed.update(rule.backup_permissions)
            inverse = ACTIONS[rule.inverse].rules.get(kind) if rule.inverse else None
            if include_undo and inverse is not None:
                needed.update(inverse.permissions)
    return sorted(needed)
