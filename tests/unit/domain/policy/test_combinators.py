"""and / or / not, Custodian style, with Kleene logic when metrics are missing."""

from __future__ import annotations

from typing import Any

import pytest

from backend.domain.policy import And, Not, Or, Truth, ValueFilter
from backend.domain.resources import MetricSpec

from .helpers import ctx, filters_of, res, truth

T, F, U = Truth.TRUE, Truth.FALSE, Truth.UNKNOWN
CPU = MetricSpec("AWS/EC2", "CPUUtilization", "Average", 14)
IDLE = {"type": "metrics", "name": "CPUUtilization", "days": 14, "op": "lt", "value": 5}
R = res(tags={"env": "dev"})
YES, NO = {"tag:env": "dev"}, {"tag:env": "prod"}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([], T),  # no filters: every resource of the kind
        ([YES, YES], T),
        ([YES, NO], F),
        ([{"or": [NO, YES]}], T),
        ([{"or": [NO, NO]}], F),
        ([{"and": [YES, NO]}], F),
        ([{"not": [NO]}], T),
        ([{"not": [YES]}], F),
        ([{"not": [YES, NO]}], T),  # not (a and b)
        ([{"not": [YES, YES]}], F),
        ([{"or": [{"not": [YES]}, {"and": [YES, {"not": [NO]}]}]}], T),
        # metrics not fetched: UNKNOWN, which and/or resolve when they can
        ([IDLE], U),
        ([NO, IDLE], F),
        ([IDLE, NO], F),
        ([YES, IDLE], U),
        ([{"or": [YES, IDLE]}], T),
        ([{"or": [IDLE, YES]}], T),
        ([{"or": [NO, IDLE]}], U),
        ([{"not": [IDLE]}], U),  # never selects on data it has not seen
        ([{"not": [NO, IDLE]}], T),
    ],
)
def test_logic(filters: list[Any], expected: Truth) -> None:
    assert truth(filters, R) is expected


def test_unknown_resolves_once_metrics_arrive() -> None:
    tree = filters_of([YES, {"not": [IDLE]}])
    assert tree.evaluate(R, ctx()) is U
    assert tree.evaluate(R, ctx({("i-1", CPU): 50.0})) is T
    assert tree.evaluate(R, ctx({("i-1", CPU): 1.0})) is F


def test_tree_shape() -> None:
    tree = filters_of([{"or": [YES, {"not": [NO]}]}, {"not": [YES, NO]}])
    yes, no = ValueFilter("tag:env", "eq", "dev"), ValueFilter("tag:env", "eq", "prod")
    assert tree == And((Or((yes, Not(no))), Not(And((yes, no)))))
    assert [type(f).__name__ for f in tree.walk()] == [
        "And", "Or", "ValueFilter", "Not", "ValueFilter", "Not", "And", "ValueFilter",
        "ValueFilter",
    ]  # fmt: skip


def test_pending_names_only_the_specs_that_could_settle_it() -> None:
    tree = filters_of([{"or": [YES, IDLE]}])
    assert tree.pending(R, ctx()) == (T, frozenset())
    tree = filters_of([NO, IDLE])
    assert tree.pending(R, ctx()) == (F, frozenset())
    tree = filters_of([YES, {"not": [IDLE]}])
    assert tree.pending(R, ctx()) == (U, frozenset({CPU}))
    assert tree.pending(R, ctx({("i-1", CPU): 1.0})) == (F, frozenset())
