"""The action registry: kinds, states, permissions, backups, inverses, parameters."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from backend.domain.policy import ACTIONS, ActionSpec, Backup, find_action, iam_permissions_for
from backend.domain.policy.actions import BackupParams, ModifyVolumeParams, ResizeParams, TagParams
from backend.domain.resources import ResourceKind as K

IAM_ACTION = re.compile(r"^(ec2|rds|elasticloadbalancing):[A-Z][A-Za-z]+$")


def test_every_rule_is_consistent() -> None:
    for action in ACTIONS.values():
        assert action.rules, action.name
        for kind, rule in action.rules.items():
            for permission in (*rule.permissions, *rule.backup_permissions):
                assert IAM_ACTION.match(permission), (action.name, permission)
            if action.changes:
                assert rule.permissions, action.name
            if rule.inverse is not None:
                # the undo step exists for the same kind
                assert kind in ACTIONS[rule.inverse].rules, (action.name, kind)
            if rule.backup is not Backup.NONE:
                assert action.params is BackupParams or rule.backup is Backup.PREVIOUS_TYPE


@pytest.mark.parametrize(
    ("name", "kind", "states", "destructive", "backup", "inverse"),
    [
        ("stop", K.EC2_INSTANCE, {"running"}, False, Backup.NONE, "start"),
        ("stop", K.RDS_INSTANCE, {"available"}, False, Backup.NONE, "start"),
        ("start", K.EC2_INSTANCE, {"stopped"}, False, Backup.NONE, "stop"),
        ("terminate", K.EC2_INSTANCE, {"running", "stopped"}, True, Backup.AMI,
         "restore-from-ami"),
        ("delete", K.EBS_VOLUME, {"available"}, True, Backup.SNAPSHOT, "restore-volume"),
        ("delete", K.EBS_SNAPSHOT, {"completed"}, True, Backup.NONE, None),
        ("delete", K.LOAD_BALANCER, {"active", "active_impaired", "failed"}, True,
         Backup.CONFIGURATION, "recreate-load-balancer"),
        ("delete", K.AMI, {"available", "failed"}, True, Backup.NONE, None),
        ("modify-volume", K.EBS_VOLUME, {"available", "in-use"}, False, Backup.PREVIOUS_TYPE,
         "modify-volume"),
        ("release", K.ELASTIC_IP, {"unassociated"}, True, Backup.NONE, None),
        ("resize", K.EC2_INSTANCE, {"running", "stopped"}, False, Backup.PREVIOUS_TYPE,
         "resize"),
        ("mark", K.RDS_INSTANCE, None, False, Backup.NONE, "untag"),
    ],
)  # fmt: skip
def test_rules(
    name: str,
    kind: K,
    states: set[str] | None,
    destructive: bool,
    backup: Backup,
    inverse: str | None,
) -> None:
    rule = ACTIONS[name].rule(kind)
    assert rule is not None
    assert (rule.states, rule.destructive, rule.backup, rule.inverse) == (
        None if states is None else frozenset(states),
        destructive,
        backup,
        inverse,
    )
    assert ACTIONS[name].reversible(kind) is (inverse is not None)


def test_kinds() -> None:
    assert ACTIONS["stop"].kinds == {K.EC2_INSTANCE, K.RDS_INSTANCE}
    assert ACTIONS["release"].kinds == {K.ELASTIC_IP}
    assert ACTIONS["report"].kinds == set(K)
    assert ACTIONS["mark"].kinds == set(K)
    assert ACTIONS["stop"].rule(K.EBS_VOLUME) is None
    assert not ACTIONS["stop"].reversible(K.AMI)


def test_report_changes_nothing_and_counts_as_reversible() -> None:
    report = ACTIONS["report"]
    assert not report.changes
    assert report.reversible(K.EBS_SNAPSHOT)
    assert all(not rule.permissions for rule in report.rules.values())


@pytest.mark.parametrize(
    ("alias", "name"),
    [("rightsize", "resize"), ("notify", "report"), ("tag", "mark"),
     ("modify", "modify-volume"), ("deregister", "delete"), ("stop", "stop")],
)  # fmt: skip
def test_aliases(alias: str, name: str) -> None:
    found = find_action(alias)
    assert found is not None
    assert found.name == name
    assert find_action("stopp") is None


def test_undo_steps_are_marked() -> None:
    assert {n for n, a in ACTIONS.items() if a.undo_only} == {
        "restore-from-ami",
        "restore-volume",
        "recreate-load-balancer",
    }


def test_iam_permissions_for_names() -> None:
    assert iam_permissions_for(["stop"]) == [
        "ec2:StartInstances",
        "ec2:StopInstances",
        "rds:StartDBInstance",
        "rds:StopDBInstance",
    ]
    assert iam_permissions_for(["stop"], include_undo=False) == [
        "ec2:StopInstances",
        "rds:StopDBInstance",
    ]
    assert iam_permissions_for(["report", "notify"]) == []
    assert iam_permissions_for(["release", "release"]) == ["ec2:ReleaseAddress"]
    with pytest.raises(KeyError):
        iam_permissions_for(["explode"])


def test_iam_permissions_for_policy_uses() -> None:
    with_backup = ActionSpec("delete", BackupParams())
    without = ActionSpec("delete", BackupParams(backup=False))
    assert iam_permissions_for([(K.EBS_VOLUME, with_backup)], include_undo=False) == [
        "ec2:CreateSnapshot",
        "ec2:CreateTags",
        "ec2:DeleteVolume",
    ]
    assert iam_permissions_for([(K.EBS_VOLUME, without)], include_undo=False) == [
        "ec2:DeleteVolume"
    ]
    assert iam_permissions_for([(K.EBS_VOLUME, without)]) == [
        "ec2:CreateTags",
        "ec2:CreateVolume",
        "ec2:DeleteVolume",
    ]
    assert iam_permissions_for([(K.EBS_SNAPSHOT, with_backup), (K.AMI, with_backup)]) == [
        "ec2:DeleteSnapshot",
        "ec2:DeregisterImage",
    ]
    tag = ActionSpec("mark", TagParams(key="k"))
    assert iam_permissions_for([(K.LOAD_BALANCER, tag)]) == [
        "elasticloadbalancing:AddTags",
        "elasticloadbalancing:RemoveTags",
    ]
    with pytest.raises(ValueError, match="does not apply"):
        iam_permissions_for([(K.ELASTIC_IP, with_backup)])


def test_params() -> None:
    modify = ModifyVolumeParams.model_validate({"volume-type": "gp3"})
    assert modify.volume_type == "gp3"
    assert modify.options() == {"volume-type": "gp3"}
    assert ModifyVolumeParams.model_validate({"volume_type": "io2", "iops": 3000}).iops == 3000
    with pytest.raises(ValidationError):
        ModifyVolumeParams.model_validate({"volume-type": "gp9"})
    with pytest.raises(ValidationError):
        ModifyVolumeParams.model_validate({})
    assert ResizeParams().instance_type is None  # the recommended type
    assert ResizeParams.model_validate({"instance-type": "m7g.large"}).instance_type
    with pytest.raises(ValidationError):
        ResizeParams.model_validate({"instance-type": "huge"})
    with pytest.raises(ValidationError, match="reserved"):
        TagParams(key="aws:cloudformation:stack")
    with pytest.raises(ValidationError):
        BackupParams.model_validate({"backup": True, "extra": 1})


def test_action_spec_is_hashable_and_says_its_backup() -> None:
    spec = ActionSpec("delete", BackupParams(backup=False))
    assert hash(spec) == hash(ActionSpec("delete", BackupParams(backup=False)))
    assert not spec.backup_enabled
    assert ActionSpec("stop").backup_enabled
    assert spec.type is ACTIONS["delete"]
