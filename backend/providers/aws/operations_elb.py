"""Load balancers (elbv2): delete after capturing the configuration, and recreate from it.

The configuration is the load balancer, its tags and attributes, its listeners with their
rules, and the target groups they forward to with their registered targets and tags. Target
groups are not deleted with the load balancer, so the undo reuses them when they are still
there. A recreated load balancer has a new ARN and a new DNS name.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from backend.domain.resources import Resource, ResourceKind
from backend.providers.aws.describe import UnknownTagsError, required_tags
from backend.providers.aws.operations_base import (
    KEY_TAG,
    BaseOperation,
    CannotUndo,
    OperationContext,
    Params,
    act,
    await_gone,
    create,
    fresh,
    fresh_or_none,
    is_gone,
    key_value,
    read,
    remove,
    settle,
    tag_list,
    user_tags,
)
from backend.providers.aws.retry import describe_error, error_code

LB = ResourceKind.LOAD_BALANCER
CONFIG_PREFIX = "config:"
_TG_FIELDS = (
    "Protocol",
    "ProtocolVersion",
    "Port",
    "VpcId",
    "TargetType",
    "IpAddressType",
    "HealthCheckEnabled",
    "HealthCheckProtocol",
    "HealthCheckPort",
    "HealthCheckPath",
    "HealthCheckIntervalSeconds",
    "HealthCheckTimeoutSeconds",
    "HealthyThresholdCount",
    "UnhealthyThresholdCount",
    "Matcher",
)
_HTTP = frozenset({"HTTP", "HTTPS"})
_SECURE = frozenset({"HTTPS", "TLS"})


def _tags_of(ctx: OperationContext, arn: str) -> dict[str, str]:
    """The tags of `arn`. An answer that leaves it out is "tags unknown", never "no tags"
    (as describe.py reads it): a backup would restore the target group without its tags,
    and the undo's owner mark would be read as absent."""
    answer = read(ctx, "elbv2", "describe_tags", ResourceArns=[arn])
    for desc in answer["TagDescriptions"]:
        if desc.get("ResourceArn") == arn:
            return required_tags(desc, "Tags", arn)
    raise UnknownTagsError(f"DescribeTags left out {arn}: tags are unknown")


def _all(ctx: OperationContext, operation: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = read(ctx, "elbv2", operation, **kwargs)
        out.extend(page[key])
        if not page.get("NextMarker"):
            return out
        kwargs["Marker"] = page["NextMarker"]


def _groups_of(ctx: OperationContext, arn: str) -> list[dict[str, Any]]:
    """The load balancer's target groups. AWS answers none with an empty list; moto raises
    TargetGroupNotFound, which for this query means the same."""
    try:
        return _all(ctx, "describe_target_groups", "TargetGroups", LoadBalancerArn=arn)
    except ClientError as exc:
        if error_code(exc) == "TargetGroupNotFound":
            return []
        raise


def _forwarded(actions: list[dict[str, Any]]) -> set[str]:
    arns = {a["TargetGroupArn"] for a in actions if a.get("TargetGroupArn")}
    for a in actions:
        arns.update(
            t["TargetGroupArn"] for t in (a.get("ForwardConfig") or {}).get("TargetGroups", ())
        )
    return arns


def capture(ctx: OperationContext, lb: Resource) -> dict[str, Any]:
    """Everything needed to build this load balancer again, as JSON-ready data."""
    arn = lb.resource_id
    listeners = []
    referenced: set[str] = set()
    for listener in _all(ctx, "describe_listeners", "Listeners", LoadBalancerArn=arn):
        rules = [
            r
            for r in _all(ctx, "describe_rules", "Rules", ListenerArn=listener["ListenerArn"])
            if not r.get("IsDefault")
        ]
        referenced |= _forwarded(listener.get("DefaultActions", []))
        for rule in rules:
            referenced |= _forwarded(rule.get("Actions", []))
        listeners.append({**listener, "Rules": rules})
    groups = {g["TargetGroupArn"]: g for g in _groups_of(ctx, arn)}
    missing = sorted(referenced - set(groups))
    if missing:
        for g in _all(ctx, "describe_target_groups", "TargetGroups", TargetGroupArns=missing):
            groups[g["TargetGroupArn"]] = g
    target_groups = []
    for tg_arn, group in groups.items():
        health = read(ctx, "elbv2", "describe_target_health", TargetGroupArn=tg_arn)
        targets = [d["Target"] for d in health["TargetHealthDescriptions"]]
        target_groups.append({**group, "Targets": targets, "Tags": _tags_of(ctx, tg_arn)})
    attributes = read(ctx, "elbv2", "describe_load_balancer_attributes", LoadBalancerArn=arn)
    return {
        "version": 1,
        "load_balancer": dict(lb.attributes),
        "tags": dict(lb.tags),
        "attributes": attributes["Attributes"],
        "listeners": listeners,
        "target_groups": target_groups,
    }


class DeleteLoadBalancer(BaseOperation):
    action = "delete"

    def backup(self, ctx: OperationContext, resource: Resource) -> str | None:
        # read again: the configuration must be the one deleted, not the inventory's copy
        now = fresh(ctx, LB, resource.resource_id)
        return CONFIG_PREFIX + json.dumps(capture(ctx, now), sort_keys=True, default=str)

    def execute(self, ctx: OperationContext, resource: Resource, params: Params) -> None:
        if fresh_or_none(ctx, LB, resource.resource_id) is None:
            return
        remove(ctx, "elbv2", "delete_load_balancer", LoadBalancerArn=resource.resource_id)

    def verify(self, ctx: OperationContext, resource_id: str, params: Params) -> Resource | None:
        await_gone(ctx, LB, resource_id)
        return None

    def undo(
        self, ctx: OperationContext, pre_state: Resource, backup_ref: str | None, params: Params
    ) -> str:
        # A delete that failed may never have been made: the original still answers.
        if fresh_or_none(ctx, LB, pre_state.resource_id) is not None:
            return f"{pre_state.resource_id} was never deleted: nothing to restore"
        if not backup_ref or not backup_ref.startswith(CONFIG_PREFIX):
            raise CannotUndo(f"no configuration of {pre_state.resource_id} was captured")
        config = json.loads(backup_ref[len(CONFIG_PREFIX) :])
        return _Rebuild(ctx, config).run(pre_state.resource_id)


class _Rebuild:
    """Recreate step by step; each step first looks for what a previous try made."""

    def __init__(self, ctx: OperationContext, config: dict[str, Any]) -> None:
        self.ctx = ctx
        self.config = config
        self.mark = key_value(ctx, "undo")
        self.arns: dict[str, str] = {}  # old target group ARN -> current one
        self.notes: list[str] = []

    def run(self, old_arn: str) -> str:
        lb = self.config["load_balancer"]
        arn, made = self._load_balancer(lb)
        ready = settle(self.ctx, LB, arn, frozenset({"active"}), frozenset({"provisioning"}))
        for group in self.config["target_groups"]:
            self._target_group(group)
        listeners = sum(self._listener(arn, spec) for spec in self.config["listeners"])
        self._attributes(arn)
        verb = "recreated" if made else "found the recreated"
        return (
            f"{verb} load balancer {lb['LoadBalancerName']} as {arn} (a NEW ARN and DNS name "
            f"{ready.attributes.get('DNSName')}; was {old_arn}); listeners and rules made: "
            f"{listeners}; " + "; ".join(self.notes)
        )

    def _load_balancer(self, lb: dict[str, Any]) -> tuple[str, bool]:
        name = lb["LoadBalancerName"]
        try:
            found = read(self.ctx, "elbv2", "describe_load_balancers", Names=[name])
        except ClientError as exc:
            if not is_gone(exc):
                raise
            found = {"LoadBalancers": []}
        for other in found["LoadBalancers"]:
            if _tags_of(self.ctx, other["LoadBalancerArn"]).get(KEY_TAG) != self.mark:
                raise CannotUndo(
                    f"a load balancer named {name} exists again ({other['LoadBalancerArn']}), "
                    "not made by this undo; leaving it alone"
                )
            return str(other["LoadBalancerArn"]), False
        kwargs: dict[str, Any] = {
            "Name": name,
            "Type": lb.get("Type", "application"),
            "Scheme": lb.get("Scheme", "internet-facing"),
            "Tags": tag_list({**user_tags(self.config["tags"]), KEY_TAG: self.mark}),
        }
        if lb.get("IpAddressType"):
            kwargs["IpAddressType"] = lb["IpAddressType"]
        mappings = [_mapping(zone) for zone in lb.get("AvailabilityZones", ())]
        if any(len(m) > 1 for m in mappings):  # NLB with fixed addresses
            kwargs["SubnetMappings"] = mappings
        else:
            kwargs["Subnets"] = [m["SubnetId"] for m in mappings]
        if lb.get("SecurityGroups"):
            kwargs["SecurityGroups"] = lb["SecurityGroups"]
        try:
            answer = create(self.ctx, "elbv2", "create_load_balancer", **kwargs)
        except ClientError as exc:
            raise CannotUndo(f"AWS would not recreate {name}: {describe_error(exc)}") from exc
        return str(answer["LoadBalancers"][0]["LoadBalancerArn"]), True

    def _target_group(self, group: dict[str, Any]) -> None:
        name = group["TargetGroupName"]
        current = self._existing_group(name)
        if current is not None:
            self.notes.append(f"reused target group {name}")
        else:
            kwargs = {k: group[k] for k in _TG_FIELDS if group.get(k) is not None}
            if group.get("Protocol") not in _HTTP:
                kwargs.pop("ProtocolVersion", None)
            if group.get("HealthCheckProtocol") not in _HTTP:
                kwargs.pop("HealthCheckPath", None)
                kwargs.pop("Matcher", None)
            tags = user_tags(group.get("Tags", {}))
            if tags:  # CreateTargetGroup refuses an empty tag list
                kwargs["Tags"] = tag_list(tags)
            made = create(self.ctx, "elbv2", "create_target_group", Name=name, **kwargs)
            current = str(made["TargetGroups"][0]["TargetGroupArn"])
            self.notes.append(f"created target group {name}")
        self.arns[group["TargetGroupArn"]] = current
        self._register(name, current, group.get("Targets", []))

    def _existing_group(self, name: str) -> str | None:
        try:
            found = read(self.ctx, "elbv2", "describe_target_groups", Names=[name])
        except ClientError as exc:
            if is_gone(exc):
                return None
            raise
        groups = found["TargetGroups"]
        return str(groups[0]["TargetGroupArn"]) if groups else None

    def _register(self, name: str, tg_arn: str, targets: list[dict[str, Any]]) -> None:
        if not targets:
            return
        try:  # registering is idempotent
            act(self.ctx, "elbv2", "register_targets", TargetGroupArn=tg_arn, Targets=targets)
            self.notes.append(f"{len(targets)} targets registered in {name}")
            return
        except ClientError as exc:
            if error_code(exc) not in ("InvalidTarget", "ValidationError"):
                raise
        skipped = []
        for target in targets:  # one is gone (a terminated instance): register the others
            try:
                act(self.ctx, "elbv2", "register_targets", TargetGroupArn=tg_arn, Targets=[target])
            except ClientError as exc:
                if error_code(exc) not in ("InvalidTarget", "ValidationError"):
                    raise
                skipped.append(str(target["Id"]))
        self.notes.append(f"targets not registered in {name} (gone): {', '.join(skipped)}")

    def _listener(self, lb_arn: str, spec: dict[str, Any]) -> int:
        made = 0
        present = {
            item["Port"]: item["ListenerArn"]
            for item in _all(self.ctx, "describe_listeners", "Listeners", LoadBalancerArn=lb_arn)
        }
        listener_arn = present.get(spec["Port"])
        if listener_arn is None:
            kwargs: dict[str, Any] = {
                "LoadBalancerArn": lb_arn,
                "Protocol": spec["Protocol"],
                "Port": spec["Port"],
                "DefaultActions": self._actions(spec.get("DefaultActions", [])),
            }
            if spec["Protocol"] in _SECURE:
                for key in ("SslPolicy", "Certificates", "AlpnPolicy"):
                    if spec.get(key):
                        kwargs[key] = spec[key]
            answer = create(self.ctx, "elbv2", "create_listener", **kwargs)
            listener_arn = answer["Listeners"][0]["ListenerArn"]
            made += 1
        taken = {
            str(r["Priority"])
            for r in _all(self.ctx, "describe_rules", "Rules", ListenerArn=listener_arn)
        }
        for rule in spec.get("Rules", []):
            if str(rule["Priority"]) in taken:
                continue
            create(
                self.ctx,
                "elbv2",
                "create_rule",
                ListenerArn=listener_arn,
                Priority=int(rule["Priority"]),
                Conditions=[_condition(c) for c in rule.get("Conditions", [])],
                Actions=self._actions(rule.get("Actions", [])),
            )
            made += 1
        return made

    def _actions(self, actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for action in actions:
            action = dict(action)
            if action.get("TargetGroupArn"):
                action["TargetGroupArn"] = self.arns.get(
                    action["TargetGroupArn"], action["TargetGroupArn"]
                )
            forward = action.get("ForwardConfig")
            if forward and forward.get("TargetGroups"):
                groups = [
                    {**t, "TargetGroupArn": self.arns.get(t["TargetGroupArn"], t["TargetGroupArn"])}
                    for t in forward["TargetGroups"]
                ]
                action["ForwardConfig"] = {**forward, "TargetGroups": groups}
            out.append(action)
        return out

    def _attributes(self, lb_arn: str) -> None:
        attributes = [a for a in self.config.get("attributes", []) if a.get("Value") is not None]
        if not attributes:
            return
        try:
            act(
                self.ctx,
                "elbv2",
                "modify_load_balancer_attributes",
                LoadBalancerArn=lb_arn,
                Attributes=attributes,
            )
        except ClientError as exc:  # the load balancer works without them: say so, go on
            self.notes.append(f"attributes not restored: {describe_error(exc)}")


def _mapping(zone: dict[str, Any]) -> dict[str, Any]:
    mapping: dict[str, Any] = {"SubnetId": zone["SubnetId"]}
    for address in zone.get("LoadBalancerAddresses") or ():
        if address.get("AllocationId"):
            mapping["AllocationId"] = address["AllocationId"]
        if address.get("PrivateIPv4Address"):
            mapping["PrivateIPv4Address"] = address["PrivateIPv4Address"]
    return mapping


def _condition(condition: dict[str, Any]) -> dict[str, Any]:
    """DescribeRules returns both Values and the *Config form; CreateRule takes one."""
    if any(key.endswith("Config") for key in condition):
        return {k: v for k, v in condition.items() if k != "Values"}
    return dict(condition)
