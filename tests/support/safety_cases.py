"""The facts, configurations and cases the safety property tests draw, and the judge's
verdicts read from them (test_safety_properties.py, test_safety_reference.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
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
        config.restored_tag,
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
    serving_targets=st.sampled_from([(), ("i-3 (healthy)",)]),
    launched_by=st.sampled_from([(), ("launch template workers",)]),
    undo_backup_of=st.sampled_from([(), (7,)]),
    replication=st.sampled_from([(), ("read replica db-2",)]),
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


def replace_config(config: SafetyConfig, **changes: object) -> SafetyConfig:
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def replace_facts(facts: ActionFacts, **changes: object) -> ActionFacts:
    return dataclasses.replace(facts, **changes)  # type: ignore[arg-type]


def reference_needs_approval(f: ActionFacts) -> bool:
    action = ACTIONS.get(ALIASES.get(f.action, f.action))
    if action is None:
        return True
    rule = action.rules.get(f.kind)
    has_inverse = rule is not None and (not action.changes or rule.inverse is not None)
    return f.risk == "high" or not has_inverse
