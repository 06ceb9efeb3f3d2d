"""Property tests: the safety rules hold on random facts, batches and transitions.

The references below are written separately from `backend.domain.safety`, straight from
ARCHITECTURE.md's invariants: protected tags (any case, surrounding spaces), the opt-out tag,
protected accounts and regions, freeze windows, approvals, missing facts before execution,
resource- and account-scope overrides (active: no end, or an end after now), and the
blast-radius limits (compared in exact fractions, not floats).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.domain.policy.actions import ACTIONS, ALIASES
from backend.domain.policy.truth import Truth
from backend.domain.resources import Resource, ResourceKind
from backend.domain.safety import (
    ActionFacts,
    Dependencies,
    Exemption,
    Judgement,
    Rule,
    SafetyConfig,
    judge,
)

NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
ACCOUNTS = ["111111111111", "222222222222", "333333333333"]
REGIONS = ["us-east-1", "us-west-2", "eu-west-1"]
STATES = ["running", "stopped", "available", "in-use", "completed", "active", "failed",
          "unassociated", "associated", "pending", "terminated", "deleting", ""]  # fmt: skip
ACTION_NAMES = sorted({*ACTIONS, *ALIASES, "no-such-action"})
SPACES = " \t\n\r\x0b\x0c\u00a0"
PROTECTED_KEY_POOL = ["env", "Environment", "stage"]
OPT_OUT_POOL = ["finops:opt-out", "do-not-touch"]
VALUE_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- strategies ---------------------------------------------------------------------------


# Strategies are built once, at import: a variant is a recipe (case choices, spaces) that is
# applied to whatever text the drawn configuration protects.
Variant = tuple[list[int], str, str]
variants: st.SearchStrategy[Variant] = st.tuples(
    st.lists(st.integers(0, 2), max_size=12),
    st.text(alphabet=SPACES, max_size=3),
    st.text(alphabet=SPACES, max_size=3),
)


def apply_variant(text: str, variant: Variant) -> str:
    """`text` with each character's case chosen by the recipe, and spaces around it."""
    cases_, before, after = variant
    chars = [
        (c.lower(), c.upper(), c)[cases_[i % len(cases_)] if cases_ else 2]
        for i, c in enumerate(text)
    ]
    return before + "".join(chars) + after


windows = st.tuples(st.integers(-72, 72), st.integers(-72, 72)).map(
    lambda h: (NOW + dt.timedelta(hours=h[0]), NOW + dt.timedelta(hours=h[1]))
)
configs: st.SearchStrategy[SafetyConfig] = st.builds(
    SafetyConfig,
    protected_tag_key=st.sampled_from(PROTECTED_KEY_POOL),
    protected_tag_values=(
        st.frozensets(st.text(alphabet=VALUE_ALPHABET, min_size=1, max_size=12), max_size=3)
        | st.just(frozenset({"prod", "production"}))
    ),
    opt_out_tag=st.sampled_from(OPT_OUT_POOL),
    protected_accounts=st.frozensets(st.sampled_from(ACCOUNTS)),
    protected_regions=st.frozensets(st.sampled_from(REGIONS)),
    freeze_windows=st.lists(windows, max_size=3).map(tuple),
)

# Overrides on the action's resource or account, others', and some ended or expired.
OVERRIDE_TARGETS = ["r-1", "r-2", "R-1", *ACCOUNTS, "444444444444", "stop-idle"]
override_ends = st.none() | st.integers(-72, 72).map(lambda h: NOW + dt.timedelta(hours=h))
exemptions_: st.SearchStrategy[tuple[Exemption, ...]] = st.lists(
    st.builds(
        Exemption,
        scope=st.sampled_from(["resource", "account", "policy", "Resource", ""]),
        target=st.tuples(st.sampled_from(OVERRIDE_TARGETS), variants).map(
            lambda t: t[1][1] + t[0] + t[1][2]  # surrounding spaces only: ids keep their case
        ),
        reason=st.text(max_size=10),
        created_by=st.sampled_from(["alice", "bob"]),
        until=override_ends,
        ident=st.none() | st.integers(1, 99),
    ),
    max_size=3,
).map(tuple)

# a noise tag: (key slot, value slot or free text, variant); resolved against the config
TagRecipe = tuple[int, int | str, Variant]
tag_recipes: st.SearchStrategy[list[TagRecipe]] = st.lists(
    st.tuples(st.integers(0, 7), st.integers(0, 7) | st.text(max_size=8), variants), max_size=4
)


def noise_tags(config: SafetyConfig, recipes: list[TagRecipe]) -> dict[str, str]:
    """Tags whose keys and values often meet the configured ones, case-varied."""
    keys = [
        "team",
        "owner",
        config.protected_tag_key,
        config.protected_tag_key.upper(),
        config.opt_out_tag,
        config.opt_out_tag.upper(),
        *PROTECTED_KEY_POOL,
    ]
    pool = ["dev", "staging", "prod-like", "preprod", "", *sorted(config.protected_tag_values)]
    tags: dict[str, str] = {}
    for key_slot, value, variant in recipes:
        text = pool[value % len(pool)] if isinstance(value, int) else value
        tags[keys[key_slot % len(keys)]] = apply_variant(text, variant)
    return tags


dependencies = st.builds(
    Dependencies,
    in_auto_scaling_group=st.none() | st.just("asg-1"),
    termination_protected=st.booleans(),
    stop_protected=st.booleans(),
    load_balancer_targets=st.sampled_from([(), ("tg-1",)]),
    attached_to=st.sampled_from([(), ("i-1",)]),
    is_root_device_of=st.none() | st.just("i-2"),
    backs_amis=st.sampled_from([(), ("ami-1",)]),
    associated_with=st.none() | st.just("eni-1"),
)


@dataclass(frozen=True)
class Case:
    facts: ActionFacts
    config: SafetyConfig
    before_execution: bool


def build_case(
    config: SafetyConfig,
    kind: ResourceKind,
    account: str,
    region: str,
    recipes: list[TagRecipe],
    state: str | None,  # None: the resource no longer exists
    action: str,
    still_matches: Truth | None,
    deps: Dependencies | None,
    approved: bool,
    risk: str,
    mode: str,
    before_execution: bool,
    tags: dict[str, str],
    exemptions: tuple[Exemption, ...] = (),
) -> Case:
    resource = (
        None
        if state is None
        else Resource(kind, "r-1", account, region, state, {**noise_tags(config, recipes), **tags})
    )
    facts = ActionFacts(
        action=action,
        kind=kind,
        account_id=account,
        region=region,
        resource_id="r-1",
        resource=resource,
        still_matches=still_matches,
        dependencies=deps,
        approved=approved,
        risk=risk,
        mode=mode,
        exemptions=exemptions,
    )
    return Case(facts, config, before_execution)


def cases(
    config: SafetyConfig | None = None, tags: dict[str, str] | None = None
) -> st.SearchStrategy[Case]:
    return st.builds(
        build_case,
        config=configs if config is None else st.just(config),
        kind=st.sampled_from(list(ResourceKind)),
        account=st.sampled_from(ACCOUNTS),
        region=st.sampled_from(REGIONS),
        recipes=tag_recipes,
        state=st.none() | st.sampled_from(STATES),
        action=st.sampled_from(ACTION_NAMES),
        still_matches=st.sampled_from([None, *Truth]),
        deps=st.none() | dependencies,
        approved=st.booleans(),
        risk=st.sampled_from(["low", "medium", "high"]),
        mode=st.sampled_from(["auto", "approval", "report"]),
        before_execution=st.booleans(),
        tags=st.just(tags or {}),
        exemptions=exemptions_,
    )


ANY_CASE = cases()

# Mostly benign facts, so that a case is often allowed and the one rule that flips it is
# what is being tested (on ANY_CASE nearly everything is blocked by several rules at once).
VALID_PAIRS = sorted((name, kind) for name, a in ACTIONS.items() for kind in a.rules)


def build_benign(
    pair: tuple[str, ResourceKind], state_pick: int, recipes: list[TagRecipe], **kw: Any
) -> Case:
    action, kind = pair
    states = ACTIONS[action].rules[kind].states
    state = sorted(states)[state_pick % len(states)] if states else STATES[state_pick]
    return build_case(kind=kind, action=action, state=state, recipes=recipes, **kw)


LIKELY_ALLOWED = st.builds(
    build_benign,
    pair=st.sampled_from(VALID_PAIRS),
    state_pick=st.integers(0, len(STATES) - 1),
    recipes=tag_recipes,
    config=st.builds(
        SafetyConfig,
        protected_tag_key=st.sampled_from(PROTECTED_KEY_POOL),
        protected_tag_values=st.sampled_from(
            [frozenset({"prod", "production"}), frozenset({"Prod", "LIVE"}), frozenset()]
        ),
        opt_out_tag=st.sampled_from(OPT_OUT_POOL),
        protected_accounts=st.frozensets(st.sampled_from(ACCOUNTS), max_size=1),
        protected_regions=st.frozensets(st.sampled_from(REGIONS), max_size=1),
        freeze_windows=st.lists(windows, max_size=1).map(tuple),
    ),
    account=st.sampled_from(ACCOUNTS),
    region=st.sampled_from(REGIONS),
    still_matches=st.sampled_from([Truth.TRUE, Truth.TRUE, Truth.TRUE, None, Truth.UNKNOWN]),
    deps=st.just(Dependencies()) | dependencies | st.none(),
    approved=st.booleans() | st.just(True),
    risk=st.sampled_from(["low", "low", "high"]),
    mode=st.sampled_from(["auto", "approval"]),
    before_execution=st.booleans(),
    tags=st.just({}),
    exemptions=st.just(()) | exemptions_,
)


def verdict_ok(case: Case, rule: Rule) -> bool | None:
    """The named rule's verdict (None if absent); every verdict of a rule must agree."""
    found = {v.ok for v in judge_case(case).verdicts if v.rule is rule}
    assert len(found) <= 1
    return found.pop() if found else None


def judge_case(case: Case) -> Judgement:
    return judge(case.facts, case.config, NOW, before_execution=case.before_execution)


def allowed(case: Case) -> bool:
    return judge(case.facts, case.config, NOW, before_execution=case.before_execution).allowed


# --- the "never allowed" properties -------------------------------------------------------


@PROPS
@given(data=st.data())
def test_a_protected_tag_value_in_any_case_with_spaces_is_never_allowed(
    data: st.DataObject,
) -> None:
    config = data.draw(configs.filter(lambda c: bool(c.protected_tag_values)))
    protected = data.draw(st.sampled_from(sorted(config.protected_tag_values)))
    value = apply_variant(protected, data.draw(variants))
    case = data.draw(cases(config, tags={config.protected_tag_key: value}))
    assert not allowed(case)
    if case.facts.resource is not None:
        assert verdict_ok(case, Rule.PROTECTED_TAG) is False, value


@PROPS
@given(data=st.data())
def test_the_opt_out_tag_with_any_value_is_never_allowed(data: st.DataObject) -> None:
    config = data.draw(configs)
    value = data.draw(st.text(max_size=10))
    case = data.draw(cases(config, tags={config.opt_out_tag: value}))
    assert not allowed(case)
    if case.facts.resource is not None:
        assert verdict_ok(case, Rule.OPT_OUT) is False


@PROPS
@given(case=ANY_CASE)
def test_a_protected_account_or_region_is_never_allowed(case: Case) -> None:
    f, c = case.facts, case.config
    if f.account_id in c.protected_accounts:
        assert not allowed(case)
        assert verdict_ok(case, Rule.PROTECTED_ACCOUNT) is False
    if f.region in c.protected_regions:
        assert not allowed(case)
        assert verdict_ok(case, Rule.PROTECTED_REGION) is False


@PROPS
@given(case=ANY_CASE, account=st.sampled_from(ACCOUNTS), region=st.sampled_from(REGIONS))
def test_protecting_the_action_s_account_or_region_blocks_it(
    case: Case, account: str, region: str
) -> None:
    f = case.facts
    for config in (
        _replace(case.config, protected_accounts=frozenset({f.account_id, account})),
        _replace(case.config, protected_regions=frozenset({f.region, region})),
    ):
        assert not allowed(Case(f, config, case.before_execution))


@PROPS
@given(case=ANY_CASE)
def test_missing_facts_before_execution_are_never_allowed(case: Case) -> None:
    f = case.facts
    before = Case(f, case.config, before_execution=True)
    if f.resource is None:
        assert not allowed(before)
        assert verdict_ok(before, Rule.EXISTS) is False
    if f.resource is not None and f.dependencies is None:
        assert not allowed(before)
        assert verdict_ok(before, Rule.DEPENDENCY) is False
    if f.resource is not None and f.still_matches in (None, Truth.UNKNOWN, Truth.FALSE):
        assert not allowed(before)
        assert verdict_ok(before, Rule.STILL_MATCHES) is False
    # the same facts with every missing one filled in badly: still blocked
    for missing in (
        _facts(f, resource=None),
        _facts(f, dependencies=None),
        _facts(f, still_matches=None),
        _facts(f, still_matches=Truth.UNKNOWN),
    ):
        assert not allowed(Case(missing, case.config, before_execution=True))


@PROPS
@given(case=ANY_CASE)
def test_a_freeze_window_or_a_missing_approval_is_never_allowed(case: Case) -> None:
    f, c = case.facts, case.config
    if any(start <= NOW < end for start, end in c.freeze_windows):
        assert not allowed(case)
    if _reference_needs_approval(f) and not f.approved:
        assert not allowed(case)


def _exempting(
    f: ActionFacts, scope: str, spaces: tuple[str, str], until: dt.datetime | None
) -> Exemption:
    target = f.resource_id if scope == "resource" else f.account_id
    return Exemption(scope, spaces[0] + target + spaces[1], "owner away", "carol", until, 7)


@PROPS
@given(
    case=ANY_CASE | LIKELY_ALLOWED,
    scope=st.sampled_from(["resource", "account"]),
    spaces=st.tuples(st.text(alphabet=SPACES, max_size=2), st.text(alphabet=SPACES, max_size=2)),
    hours=st.none() | st.integers(1, 24 * 365),
)
def test_a_resource_or_account_under_an_active_override_is_never_allowed(
    case: Case, scope: str, spaces: tuple[str, str], hours: int | None
) -> None:
    until = None if hours is None else NOW + dt.timedelta(hours=hours)
    exemption = _exempting(case.facts, scope, spaces, until)
    f = _facts(case.facts, exemptions=(*case.facts.exemptions, exemption))
    for before_execution in (False, True):
        exempted = Case(f, case.config, before_execution)
        assert not allowed(exempted)
        assert verdict_ok(exempted, Rule.EXEMPTED) is False
        reason = next(v.reason for v in judge_case(exempted).verdicts if v.rule is Rule.EXEMPTED)
        # the reason names the override: which, who, why and until when
        assert "override #7" in reason and "carol" in reason and "owner away" in reason
        assert (f"until {until:%Y-%m-%d %H:%M}Z" if until else "until ended") in reason


@PROPS
@given(
    case=ANY_CASE | LIKELY_ALLOWED,
    scope=st.sampled_from(["resource", "account"]),
    ended=st.integers(0, 24 * 365),
)
def test_an_ended_or_unrelated_override_changes_nothing(case: Case, scope: str, ended: int) -> None:
    f = case.facts
    inert = (
        _exempting(f, scope, ("", ""), NOW - dt.timedelta(hours=ended)),  # ended (or now)
        Exemption(scope, "r-elsewhere" if scope == "resource" else "999999999999", "x", "y"),
        Exemption("policy", f.resource_id, "a policy-scope row", "z"),
    )
    bare = Case(_facts(f, exemptions=()), case.config, case.before_execution)
    inert_case = Case(_facts(f, exemptions=inert), case.config, case.before_execution)
    assert allowed(inert_case) == allowed(bare)
    assert verdict_ok(inert_case, Rule.EXEMPTED) is True


# --- judge against a reference ------------------------------------------------------------


def _reference_needs_approval(f: ActionFacts) -> bool:
    action = ACTIONS.get(ALIASES.get(f.action, f.action))
    if action is None:
        return True
    rule = action.rules.get(f.kind)
    has_inverse = rule is not None and (not action.changes or rule.inverse is not None)
    return f.risk == "high" or not has_inverse


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
    return not (f.kind is ResourceKind.ELASTIC_IP and action == "release" and d.associated_with)


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
    if _reference_needs_approval(f) and not f.approved:
        return False
    r = f.resource
    if r is None:
        return False
    value = r.tags.get(c.protected_tag_key)
    protected = {v.lower() for v in c.protected_tag_values}
    if value is not None and value.strip().lower() in protected:
        return False
    if c.opt_out_tag in r.tags:
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


def _replace(config: SafetyConfig, **changes: object) -> SafetyConfig:
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def _facts(facts: ActionFacts, **changes: object) -> ActionFacts:
    return dataclasses.replace(facts, **changes)  # type: ignore[arg-type]
