"""The judge against a reference written apart from it, straight from ARCHITECTURE.md's
invariants, on random cases (the strategies are in tests/support/safety_cases.py)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from backend.domain.policy.actions import ACTIONS, ALIASES
from backend.domain.policy.truth import Truth
from backend.domain.resources import Resource, ResourceKind
from backend.domain.safety import (
    ActionFacts,
    Dependencies,
    SafetyConfig,
    judge,
)
from tests.support.safety_cases import (
    ACCOUNTS,
    ANY_CASE,
    LIKELY_ALLOWED,
    NOW,
    REGIONS,
    Case,
    reference_needs_approval,
)

# --- judge against a reference ------------------------------------------------------------


def _reference_dependencies_ok(f: ActionFacts, d: Dependencies) -> bool:
    action = ALIASES.get(f.action, f.action)
    if f.kind is ResourceKind.EC2_INSTANCE and action in ("stop", "terminate", "resize"):
        if d.in_auto_scaling_group or d.load_balancer_targets:
            return False
        if action in ("stop", "resize") and d.stop_protected:
            return False
        if action == "terminate" and d.termination_protected:
            return False
    if (
        f.kind is ResourceKind.EBS_VOLUME
        and action == "delete"
        and (d.attached_to or d.is_root_device_of)
    ):
        return False
    if f.kind is ResourceKind.EBS_SNAPSHOT and action == "delete" and d.backs_amis:
        return False
    if f.kind is ResourceKind.LOAD_BALANCER and action == "delete" and d.serving_targets:
        return False
    if f.kind is ResourceKind.AMI and d.launched_by:
        return False
    if f.kind is ResourceKind.RDS_INSTANCE and d.replication:
        return False
    if d.undo_backup_of:  # whatever the action: what a rollback restores from stays
        return False
    return not (f.kind is ResourceKind.ELASTIC_IP and action == "release" and d.associated_with)


def _values(tags: dict[str, str], key: str) -> list[str]:
    """The values of the tags whose key is `key` in any case, with spaces around it."""
    return [v for k, v in tags.items() if k.strip().lower() == key.strip().lower()]


def _reference_exempted(f: ActionFacts) -> bool:
    named = {"resource": f.resource_id, "account": f.account_id}
    active = [e for e in f.exemptions if e.until is None or e.until > NOW]  # not ended
    return any(e.target.strip() == named.get(e.scope) for e in active)


def reference_allowed(case: Case) -> bool:
    f, c = case.facts, case.config
    if f.account_id in c.protected_accounts or f.region in c.protected_regions:
        return False
    if _reference_exempted(f):
        return False
    if any(start <= NOW < end for start, end in c.freeze_windows):
        return False
    if reference_needs_approval(f) and not f.approved:
        return False
    r = f.resource
    if r is None:
        return False
    protected = {v.lower() for v in c.protected_tag_values}
    if any(v.strip().lower() in protected for v in _values(r.tags, c.protected_tag_key)):
        return False
    if _values(r.tags, c.opt_out_tag) or _values(r.tags, c.restored_tag):
        return False
    action = ACTIONS.get(ALIASES.get(f.action, f.action))
    rule = action.rules.get(f.kind) if action else None
    if rule is None or (rule.states is not None and r.state not in rule.states):
        return False
    if (case.before_execution or f.still_matches is not None) and f.still_matches is not Truth.TRUE:
        return False
    if f.dependencies is None:
        return not case.before_execution
    return _reference_dependencies_ok(f, f.dependencies)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=ANY_CASE | LIKELY_ALLOWED)
def test_judge_agrees_with_the_reference(case: Case) -> None:
    judgement = judge(case.facts, case.config, NOW, before_execution=case.before_execution)
    assert judgement.allowed == reference_allowed(case), judgement.summary()
    assert judgement.allowed == (not judgement.blocking)


def test_a_benign_action_is_allowed() -> None:
    """The reference is not vacuous: clean facts are allowed before execution."""
    resource = Resource(ResourceKind.EC2_INSTANCE, "i-1", ACCOUNTS[0], REGIONS[0], "running")
    facts = ActionFacts(
        "stop",
        ResourceKind.EC2_INSTANCE,
        ACCOUNTS[0],
        REGIONS[0],
        "i-1",
        resource,
        still_matches=Truth.TRUE,
        dependencies=Dependencies(),
    )
    assert judge(facts, SafetyConfig(), NOW, before_execution=True).allowed
