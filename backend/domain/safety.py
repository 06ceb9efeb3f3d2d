"""Safety rules: pure judgements over facts gathered by the caller. Any doubt blocks.

`judge` takes everything a rule needs as data (the resource as just described, its
dependencies, whether the policy still selects it) and returns one verdict per rule. The
caller gathers the facts; an error while gathering is itself a blocking verdict
(FAIL_CLOSED), never a pass.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from backend.domain.policy.actions import ACTIONS, ALIASES
from backend.domain.policy.truth import Truth
from backend.domain.resources import Resource, ResourceKind


class Rule(StrEnum):
    EMERGENCY_STOP = "emergency-stop"
    FAIL_CLOSED = "fail-closed"
    PROTECTED_TAG = "protected-tag"
    OPT_OUT = "opt-out"
    PROTECTED_ACCOUNT = "protected-account"
    PROTECTED_REGION = "protected-region"
    EXISTS = "resource-exists"
    STATE = "resource-state"
    STILL_MATCHES = "still-matches-policy"
    DEPENDENCY = "dependency"
    FREEZE = "change-freeze"
    APPROVAL = "approval-required"
    BLAST_RADIUS = "blast-radius"
    OWNER_NOTICE = "owner-notice"
    EXEMPTED = "exempted"  # exempted by a resource- or account-scope override
    SCHEDULE_WINDOW = "schedule-window"  # a scheduled policy's run window has passed
    FRESH_DATA = "fresh-data"  # the inventory and metrics the decision rests on are recent


@dataclass(frozen=True)
class SafetyConfig:
    """What an administrator configures; no policy can change any of it."""

    protected_tag_key: str = "env"
    protected_tag_values: frozenset[str] = frozenset({"prod", "production"})
    opt_out_tag: str = "finops:opt-out"
    # A resource a rollback brought back (its owner objected, or an alarm fired): no policy
    # acts on it again until a person removes the tag.
    restored_tag: str = "finops:restored-from"
    protected_accounts: frozenset[str] = frozenset()
    protected_regions: frozenset[str] = frozenset()
    freeze_windows: tuple[tuple[dt.datetime, dt.datetime], ...] = ()
    max_actions_per_run: int = 50
    max_actions_per_hour: int = 100
    max_percent_of_fleet_per_run: float = 10.0


@dataclass(frozen=True)
class Dependencies:
    """What else relies on the resource (gathered fresh from AWS by the caller)."""

    in_auto_scaling_group: str | None = None
    termination_protected: bool = False
    stop_protected: bool = False
    load_balancer_targets: tuple[str, ...] = ()
    attached_to: tuple[str, ...] = ()
    is_root_device_of: str | None = None
    backs_amis: tuple[str, ...] = ()
    associated_with: str | None = None
    serving_targets: tuple[str, ...] = ()
    launched_by: tuple[str, ...] = ()
    replication: tuple[str, ...] = ()
    source_volume_exists: bool | None = None  # read by the policy's re-evaluation
    # actions (succeeded or failed, so still to be rolled back) whose undo restores from it
    undo_backup_of: tuple[int, ...] = ()


@dataclass(frozen=True)
class Exemption:
    """A manual override that exempts one resource, or a whole account, from every action.

    Gathered by the caller from the overrides table; `until` None means until it is ended.
    """

    scope: str  # "resource" | "account"
    target: str
    reason: str
    created_by: str
    until: dt.datetime | None = None
    ident: int | None = None

    def active(self, now: dt.datetime) -> bool:
        return self.until is None or self.until > now

    def covers(self, facts: ActionFacts) -> bool:
        # Spaces around a typed target must not turn an exemption into a silent no-op.
        target = self.target.strip()
        if self.scope == "resource":
            return target == facts.resource_id
        if self.scope == "account":
            return target == facts.account_id
        return False

    def describe(self) -> str:
        until = f"until {self.until:%Y-%m-%d %H:%M}Z" if self.until else "until ended"
        name = f"override #{self.ident}" if self.ident is not None else "an override"
        who = f"(by {self.created_by}, {until})"
        return f"{self.scope} {self.target.strip()} exempted by {name} {who}: {self.reason}"


@dataclass(frozen=True)
class Verdict:
    rule: Rule
    ok: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.value, "ok": self.ok, "reason": self.reason}


@dataclass(frozen=True)
class Judgement:
    verdicts: tuple[Verdict, ...]

    @property
    def allowed(self) -> bool:
        return bool(self.verdicts) and all(v.ok for v in self.verdicts)

    @property
    def blocking(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if not v.ok)

    def summary(self) -> str:
        if self.allowed:
            return "allowed"
        return "; ".join(f"{v.rule.value}: {v.reason}" for v in self.blocking)

    def as_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "verdicts": [v.as_dict() for v in self.verdicts]}


@dataclass(frozen=True)
class ActionFacts:
    """One proposed action and what is known about its resource right now.

    `resource` None means AWS says it no longer exists. `dependencies` None means they were
    not probed (at planning); before execution the caller must probe them.
    """

    action: str
    kind: ResourceKind
    account_id: str
    region: str
    resource_id: str
    resource: Resource | None
    still_matches: Truth | None = None
    dependencies: Dependencies | None = None
    approved: bool = False
    risk: str = "low"
    mode: str = "approval"
    # the policy promises the owner notice; None means the notice was not looked up
    notice_required: bool = False
    notice_delivered: bool | None = None
    # active resource- and account-scope overrides the caller read (see Exemption)
    exemptions: tuple[Exemption, ...] = ()


def canonical_action(name: str) -> str:
    return ALIASES.get(name, name)


def needs_approval(action: str, kind: ResourceKind, risk: str) -> bool:
    """Irreversible or high-risk actions never run on a policy's say-so alone."""
    action_type = ACTIONS.get(canonical_action(action))
    if action_type is None:
        return True
    return risk == "high" or not action_type.reversible(kind)


def judge(
    facts: ActionFacts, config: SafetyConfig, now: dt.datetime, *, before_execution: bool
) -> Judgement:
    """Every rule's verdict on one action. Before execution, missing facts block."""
    verdicts = [
        _account(facts, config),
        _region(facts, config),
        _freeze(config, now),
        _approval(facts),
        _exempted(facts, now),
    ]
    if facts.notice_required and (before_execution or facts.notice_delivered is not None):
        verdicts.append(_notice(facts))
    resource = facts.resource
    if resource is None:
        verdicts.append(Verdict(Rule.EXISTS, False, f"{facts.resource_id} no longer exists"))
        return Judgement(tuple(verdicts))
    verdicts += [
        Verdict(Rule.EXISTS, True, "exists"),
        _protected(resource, config),
        _opt_out(resource, config),
        _state(facts, resource),
    ]
    if facts.still_matches is not None or before_execution:
        verdicts.append(_still_matches(facts.still_matches))
    if facts.dependencies is not None:
        verdicts.append(_dependencies(facts, facts.dependencies))
    elif before_execution:
        verdicts.append(Verdict(Rule.DEPENDENCY, False, "dependencies were not checked"))
    return Judgement(tuple(verdicts))


def _account(f: ActionFacts, c: SafetyConfig) -> Verdict:
    if f.account_id in c.protected_accounts:
        return Verdict(Rule.PROTECTED_ACCOUNT, False, f"account {f.account_id} is protected")
    return Verdict(Rule.PROTECTED_ACCOUNT, True, "account not protected")


def _region(f: ActionFacts, c: SafetyConfig) -> Verdict:
    if f.region in c.protected_regions:
        return Verdict(Rule.PROTECTED_REGION, False, f"region {f.region} is protected")
    return Verdict(Rule.PROTECTED_REGION, True, "region not protected")


def _exempted(f: ActionFacts, now: dt.datetime) -> Verdict:
    # An expired or ended override exempts nothing, even if the caller passed it along.
    found = [e for e in f.exemptions if e.active(now) and e.covers(f)]
    if found:
        return Verdict(Rule.EXEMPTED, False, "; ".join(e.describe() for e in found))
    return Verdict(Rule.EXEMPTED, True, "no override exempts it")


def _freeze(c: SafetyConfig, now: dt.datetime) -> Verdict:
    for start, end in c.freeze_windows:
        if start <= now < end:
            return Verdict(
                Rule.FREEZE,
                False,
                # Windows keep the offset they were written with: convert before saying UTC.
                f"change freeze {start.astimezone(dt.UTC):%Y-%m-%d %H:%M} to "
                f"{end.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC",
            )
    return Verdict(Rule.FREEZE, True, "no change freeze")


def _approval(f: ActionFacts) -> Verdict:
    if needs_approval(f.action, f.kind, f.risk) and not f.approved:
        return Verdict(
            Rule.APPROVAL,
            False,
            f"{f.action} on {f.kind.value} is irreversible or high-risk: a person must approve it",
        )
    return Verdict(Rule.APPROVAL, True, "approved" if f.approved else "no approval needed")


def _notice(f: ActionFacts) -> Verdict:
    # A policy that promises notice never acts without it, however the action was planned.
    if f.notice_delivered:
        return Verdict(Rule.OWNER_NOTICE, True, "the owner was notified")
    return Verdict(
        Rule.OWNER_NOTICE,
        False,
        "the policy promises the owner notice, and no delivered notice is on record",
    )


def _tag_values(r: Resource, key: str) -> list[tuple[str, str]]:
    """The (key, value) tags whose key is `key` up to case and surrounding spaces: an owner's
    `Env` or `FinOps:Opt-Out ` protects as surely as the canonical spelling (fail closed)."""
    wanted = key.strip().casefold()
    return [(k, v) for k, v in r.tags.items() if k.strip().casefold() == wanted]


def fresh_data(
    observed: Sequence[tuple[str, dt.datetime]], now: dt.datetime, max_age: dt.timedelta
) -> Verdict:
    """Invariant 1: a decision resting on data older than `max_age` blocks (fail closed).

    `observed` names each piece of evidence and when it was collected. An account whose
    scans fail keeps its old rows; without this, 30-day-old utilisation stops a busy box.
    """
    stale = [(what, now - at) for what, at in observed if now - at > max_age]
    if not stale:
        return Verdict(Rule.FRESH_DATA, True, f"evidence at most {_age(max_age)} old")
    ages = "; ".join(f"{what} is {_age(age)} old" for what, age in stale)
    return Verdict(
        Rule.FRESH_DATA,
        False,
        f"stale inventory: {ages}, beyond the {_age(max_age)} bound "
        "(are the account's scans failing?)",
    )


def _age(delta: dt.timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    if hours >= 48:
        return f"{hours // 24}d {hours % 24}h"
    return f"{hours}h" if hours else f"{int(delta.total_seconds() // 60)}min"


def _protected(r: Resource, c: SafetyConfig) -> Verdict:
    # tag values are compared without case too: Prod and PRODUCTION are production
    protected = {v.casefold() for v in c.protected_tag_values}
    for key, value in _tag_values(r, c.protected_tag_key):
        if value is not None and value.strip().casefold() in protected:
            return Verdict(Rule.PROTECTED_TAG, False, f"tagged {key}={value}")
    return Verdict(Rule.PROTECTED_TAG, True, "no protected tag")


def _opt_out(r: Resource, c: SafetyConfig) -> Verdict:
    found = _tag_values(r, c.opt_out_tag)
    if found:
        return Verdict(Rule.OPT_OUT, False, f"its owner opted out ({found[0][0]})")
    restored = _tag_values(r, c.restored_tag)
    if restored:
        key, source = restored[0]
        return Verdict(
            Rule.OPT_OUT,
            False,
            f"restored by a rollback ({key}={source}): no policy acts on it again until a "
            f"person removes {key}",
        )
    return Verdict(Rule.OPT_OUT, True, "not opted out")


def _state(f: ActionFacts, r: Resource) -> Verdict:
    action_type = ACTIONS.get(canonical_action(f.action))
    rule = action_type.rule(f.kind) if action_type else None
    if rule is None:
        return Verdict(Rule.STATE, False, f"{f.action} does not apply to {f.kind.value}")
    if rule.states is not None and r.state not in rule.states:
        return Verdict(
            Rule.STATE,
            False,
            f"state is {r.state}; {f.action} needs " + " or ".join(sorted(rule.states)),
        )
    return Verdict(Rule.STATE, True, f"state {r.state}")


def _still_matches(truth: Truth | None) -> Verdict:
    if truth is Truth.TRUE:
        return Verdict(Rule.STILL_MATCHES, True, "the policy still selects it")
    if truth is Truth.FALSE:
        return Verdict(Rule.STILL_MATCHES, False, "the policy no longer selects it")
    return Verdict(
        Rule.STILL_MATCHES, False, "cannot tell whether the policy still selects it (data missing)"
    )


_INSTANCE_STOPPING = {"stop", "terminate", "resize"}


def _dependencies(f: ActionFacts, d: Dependencies) -> Verdict:
    action = canonical_action(f.action)
    problems: list[str] = []
    if f.kind is ResourceKind.EC2_INSTANCE and action in _INSTANCE_STOPPING:
        if d.in_auto_scaling_group:
            problems.append(f"member of Auto Scaling group {d.in_auto_scaling_group}")
        if d.load_balancer_targets:
            problems.append(
                f"registered in {len(d.load_balancer_targets)} target group(s) or classic "
                "load balancer(s)"
            )
        if action in ("stop", "resize") and d.stop_protected:
            problems.append("stop protection is on")
        if action == "terminate" and d.termination_protected:
            problems.append("termination protection is on")
    if f.kind is ResourceKind.EBS_VOLUME and action == "delete":
        if d.attached_to:
            problems.append(f"attached to {', '.join(d.attached_to)}")
        if d.is_root_device_of:
            problems.append(f"root device of {d.is_root_device_of}")
    if f.kind is ResourceKind.EBS_SNAPSHOT and action == "delete" and d.backs_amis:
        problems.append(f"backs AMI {', '.join(d.backs_amis)}")
    if f.kind is ResourceKind.ELASTIC_IP and action == "release" and d.associated_with:
        problems.append(f"associated with {d.associated_with}")
    if f.kind is ResourceKind.LOAD_BALANCER and action == "delete" and d.serving_targets:
        shown = ", ".join(d.serving_targets[:3]) + ("..." if len(d.serving_targets) > 3 else "")
        problems.append(f"{len(d.serving_targets)} target(s) in service: {shown}")
    if f.kind is ResourceKind.RDS_INSTANCE and d.replication:
        problems.append(", ".join(d.replication))
    if f.kind is ResourceKind.AMI and d.launched_by:
        problems.append(f"launched by {', '.join(d.launched_by)}")
    if d.undo_backup_of:
        ids = ", ".join(str(i) for i in d.undo_backup_of)
        problems.append(f"the backup that rolling back action(s) {ids} restores from")
    if problems:
        return Verdict(Rule.DEPENDENCY, False, "; ".join(problems))
    return Verdict(Rule.DEPENDENCY, True, "nothing depends on it")


@dataclass(frozen=True)
class BatchItem:
    policy: str
    kind: ResourceKind
    policy_max_actions: int | None = None
    policy_max_percent: float | None = None


@dataclass(frozen=True)
class FleetCounts:
    by_kind: Mapping[ResourceKind, int] = field(default_factory=dict)


def check_batch(
    batch: Sequence[BatchItem],
    fleet: FleetCounts,
    *,
    executed_last_hour: int,
    config: SafetyConfig,
) -> Verdict:
    """Blast radius: crossing any limit stops the whole batch (never the first N of it)."""
    problems: list[str] = []
    if len(batch) > config.max_actions_per_run:
        problems.append(f"{len(batch)} actions in one run > limit {config.max_actions_per_run}")
    if executed_last_hour + len(batch) > config.max_actions_per_hour:
        problems.append(
            f"{executed_last_hour} in the last hour + {len(batch)} now > hourly "
            f"limit {config.max_actions_per_hour}"
        )
    by_kind: dict[ResourceKind, int] = {}
    by_policy: dict[str, list[BatchItem]] = {}
    for item in batch:
        by_kind[item.kind] = by_kind.get(item.kind, 0) + 1
        by_policy.setdefault(item.policy, []).append(item)
    for kind, count in by_kind.items():
        percent = _percent(count, fleet.by_kind.get(kind, 0))
        if percent > config.max_percent_of_fleet_per_run:
            problems.append(
                f"{count} {kind.value} = {percent:.1f}% of the fleet > "
                f"{config.max_percent_of_fleet_per_run:g}%"
            )
    for policy, items in by_policy.items():
        first = items[0]
        if first.policy_max_actions is not None and len(items) > first.policy_max_actions:
            problems.append(
                f"policy {policy}: {len(items)} actions > its limit {first.policy_max_actions}"
            )
        percent = _percent(len(items), fleet.by_kind.get(first.kind, 0))
        if first.policy_max_percent is not None and percent > first.policy_max_percent:
            problems.append(
                f"policy {policy}: {percent:.1f}% of the {first.kind.value} fleet "
                f"> its limit {first.policy_max_percent:g}%"
            )
    if problems:
        return Verdict(Rule.BLAST_RADIUS, False, "; ".join(problems))
    return Verdict(Rule.BLAST_RADIUS, True, f"{len(batch)} action(s) within every limit")


def _percent(count: int, fleet: int) -> float:
    # an unknown or empty fleet makes any action 100% of it: fail closed
    return 100.0 if fleet <= 0 else 100.0 * count / fleet
