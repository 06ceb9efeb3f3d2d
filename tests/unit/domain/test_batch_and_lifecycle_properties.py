"""Property tests of the blast-radius check and the action lifecycle (split from
test_safety_properties.py: the rules' properties live there)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.domain.lifecycle import (
    TRANSITIONS,
    ActionState,
    IllegalTransitionError,
    check_transition,
)
from backend.domain.resources import ResourceKind
from backend.domain.safety import (
    BatchItem,
    FleetCounts,
    Rule,
    SafetyConfig,
    check_batch,
)
from tests.support.safety_cases import PROPS

# --- blast radius -------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLimits:
    kind: ResourceKind
    max_actions: int | None
    max_percent: Fraction | None


percents = st.builds(Fraction, st.integers(0, 400), st.sampled_from([1, 2, 4]))
policy_limits = st.builds(
    PolicyLimits,
    kind=st.sampled_from(list(ResourceKind)),
    max_actions=st.none() | st.integers(0, 12),
    max_percent=st.none() | percents,
)


BatchCase = tuple[list[BatchItem], dict[ResourceKind, int], int, SafetyConfig]


def build_batch(
    policies: dict[str, PolicyLimits],
    picks: list[int],
    fleet: dict[ResourceKind, int],
    last_hour: int,
    config: SafetyConfig,
) -> BatchCase:
    # a policy acts on one kind and has one set of limits, as the engine builds its batch
    names = sorted(policies)
    batch = []
    for pick in picks:
        name = names[pick % len(names)]
        limits = policies[name]
        percent = None if limits.max_percent is None else float(limits.max_percent)
        batch.append(BatchItem(name, limits.kind, limits.max_actions, percent))
    return batch, fleet, last_hour, config


batches: st.SearchStrategy[BatchCase] = st.builds(
    build_batch,
    policies=st.dictionaries(st.sampled_from("abcde"), policy_limits, min_size=1),
    picks=st.lists(st.integers(0, 4), max_size=25),
    fleet=st.dictionaries(st.sampled_from(list(ResourceKind)), st.integers(0, 60)),
    last_hour=st.integers(0, 60),
    config=st.builds(
        SafetyConfig,
        max_actions_per_run=st.integers(0, 30),
        max_actions_per_hour=st.integers(0, 60),
        max_percent_of_fleet_per_run=percents.map(float),
    ),
)


def _share(count: int, fleet: int) -> Fraction:
    return Fraction(100) if fleet <= 0 else Fraction(100 * count, fleet)


def reference_batch_ok(
    batch: list[BatchItem], fleet: dict[ResourceKind, int], last_hour: int, c: SafetyConfig
) -> bool:
    if len(batch) > c.max_actions_per_run:
        return False
    if last_hour + len(batch) > c.max_actions_per_hour:
        return False
    for kind in {i.kind for i in batch}:
        count = sum(1 for i in batch if i.kind is kind)
        if _share(count, fleet.get(kind, 0)) > Fraction(c.max_percent_of_fleet_per_run):
            return False
    for item in batch:
        mine = [i for i in batch if i.policy == item.policy]
        if item.policy_max_actions is not None and len(mine) > item.policy_max_actions:
            return False
        share = _share(len(mine), fleet.get(item.kind, 0))
        if item.policy_max_percent is not None and share > Fraction(item.policy_max_percent):
            return False
    return True


@settings(max_examples=1000, deadline=None)
@given(case=batches)
def test_check_batch_is_ok_iff_every_limit_holds(
    case: BatchCase,
) -> None:
    batch, fleet, last_hour, config = case
    verdict = check_batch(batch, FleetCounts(fleet), executed_last_hour=last_hour, config=config)
    assert verdict.rule is Rule.BLAST_RADIUS
    assert verdict.ok == reference_batch_ok(batch, fleet, last_hour, config), verdict.reason


@PROPS
@given(case=batches, extra=st.integers(1, 5))
def test_a_batch_over_a_limit_is_refused_whole_and_growing_it_never_helps(
    case: BatchCase, extra: int
) -> None:
    batch, fleet, last_hour, config = case
    if not batch:
        return
    more = batch + [batch[0]] * extra
    first = check_batch(batch, FleetCounts(fleet), executed_last_hour=last_hour, config=config)
    grown = check_batch(more, FleetCounts(fleet), executed_last_hour=last_hour, config=config)
    later = check_batch(batch, FleetCounts(fleet), executed_last_hour=last_hour + 1, config=config)
    if not first.ok:
        assert not grown.ok
        assert not later.ok


# --- lifecycle ----------------------------------------------------------------------------


ALL_PAIRS = list(itertools.product(ActionState, ActionState))


@pytest.mark.parametrize(("current", "wanted"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_only_listed_transitions_are_legal(current: ActionState, wanted: ActionState) -> None:
    if wanted in TRANSITIONS[current]:
        check_transition(current.value, wanted.value)
    else:
        with pytest.raises(IllegalTransitionError):
            check_transition(current.value, wanted.value)


@given(
    current=st.sampled_from(list(ActionState)),
    wanted=st.text(max_size=20).filter(lambda s: s not in {a.value for a in ActionState}),
)
def test_a_transition_to_an_unknown_state_raises(current: ActionState, wanted: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        check_transition(current.value, wanted)


def test_every_state_has_a_transition_entry_and_final_states_are_final() -> None:
    assert set(TRANSITIONS) == set(ActionState)
    assert not TRANSITIONS[ActionState.REJECTED]
    assert not TRANSITIONS[ActionState.ROLLED_BACK]
    # nothing reaches executing except by a claim of an approved action
    assert {s for s, nxt in TRANSITIONS.items() if ActionState.EXECUTING in nxt} == {
        ActionState.APPROVED
    }
    # nothing becomes succeeded except from executing
    assert {s for s, nxt in TRANSITIONS.items() if ActionState.SUCCEEDED in nxt} == {
        ActionState.EXECUTING
    }


# --- helpers ------------------------------------------------------------------------------
