"""Property tests: the safety rules hold on random facts, batches and transitions.

The references (here, in test_safety_reference.py and in tests/support/safety_cases.py,
which draws the cases) are written separately from `backend.domain.safety`, straight from
ARCHITECTURE.md's invariants: protected tags (any case, surrounding spaces), the opt-out tag,
protected accounts and regions, freeze windows, approvals, missing facts before execution,
resource- and account-scope overrides (active: no end, or an end after now), and the
blast-radius limits (compared in exact fractions, not floats).
"""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from backend.config import parse_window
from backend.domain.policy.truth import Truth
from backend.domain.safety import (
    ActionFacts,
    Exemption,
    Rule,
    SafetyConfig,
    _freeze,
)
from tests.support.safety_cases import (
    ACCOUNTS,
    ANY_CASE,
    LIKELY_ALLOWED,
    NOW,
    PROPS,
    REGIONS,
    SPACES,
    Case,
    allowed,
    apply_variant,
    cases,
    configs,
    judge_case,
    reference_needs_approval,
    replace_config,
    replace_facts,
    variants,
    verdict_ok,
)

# --- the "never allowed" properties -------------------------------------------------------


@PROPS
@given(data=st.data())
def test_a_protected_tag_in_any_case_with_spaces_is_never_allowed(
    data: st.DataObject,
) -> None:
    config = data.draw(configs.filter(lambda c: bool(c.protected_tag_values)))
    protected = data.draw(st.sampled_from(sorted(config.protected_tag_values)))
    value = apply_variant(protected, data.draw(variants))
    key = apply_variant(config.protected_tag_key, data.draw(variants))  # `Env`, ` ENV`
    case = data.draw(cases(config, tags={key: value}))
    assert not allowed(case)
    if case.facts.resource is not None:
        assert verdict_ok(case, Rule.PROTECTED_TAG) is False, value


@PROPS
@given(data=st.data())
def test_the_opt_out_tag_in_any_case_with_any_value_is_never_allowed(data: st.DataObject) -> None:
    config = data.draw(configs)
    value = data.draw(st.text(max_size=10))
    key = apply_variant(config.opt_out_tag, data.draw(variants))  # `FinOps:Opt-Out `
    case = data.draw(cases(config, tags={key: value}))
    assert not allowed(case)
    if case.facts.resource is not None:
        assert verdict_ok(case, Rule.OPT_OUT) is False


@PROPS
@given(data=st.data())
def test_a_resource_a_rollback_restored_is_never_allowed(data: st.DataObject) -> None:
    """Its owner objected (or an alarm fired) once: no policy removes it again by itself."""
    config = data.draw(configs)
    source = data.draw(st.text(max_size=12))
    key = apply_variant(config.restored_tag, data.draw(variants))
    case = data.draw(cases(config, tags={key: source}))
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
        replace_config(case.config, protected_accounts=frozenset({f.account_id, account})),
        replace_config(case.config, protected_regions=frozenset({f.region, region})),
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
        replace_facts(f, resource=None),
        replace_facts(f, dependencies=None),
        replace_facts(f, still_matches=None),
        replace_facts(f, still_matches=Truth.UNKNOWN),
    ):
        assert not allowed(Case(missing, case.config, before_execution=True))


@PROPS
@given(case=ANY_CASE)
def test_a_freeze_window_or_a_missing_approval_is_never_allowed(case: Case) -> None:
    f, c = case.facts, case.config
    if any(start <= NOW < end for start, end in c.freeze_windows):
        assert not allowed(case)
    if reference_needs_approval(f) and not f.approved:
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
    f = replace_facts(case.facts, exemptions=(*case.facts.exemptions, exemption))
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
    bare = Case(replace_facts(f, exemptions=()), case.config, case.before_execution)
    inert_case = Case(replace_facts(f, exemptions=inert), case.config, case.before_execution)
    assert allowed(inert_case) == allowed(bare)
    assert verdict_ok(inert_case, Rule.EXEMPTED) is True


def test_a_freeze_verdict_names_the_window_in_utc() -> None:
    # A Sydney team's window, written with its +10:00 offset: the verdict says UTC, so the
    # times it prints must be UTC times, not the window's own wall clock.
    window = parse_window("2026-12-20T00:00+10:00/2027-01-03T00:00+10:00")
    now = dt.datetime(2026, 12, 19, 15, 0, tzinfo=dt.UTC)  # 01:00 on the 20th in Sydney
    verdict = _freeze(SafetyConfig(freeze_windows=(window,)), now)
    assert not verdict.ok
    assert verdict.reason == "change freeze 2026-12-19 14:00 to 2027-01-02 14:00 UTC"
