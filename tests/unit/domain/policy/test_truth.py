from __future__ import annotations

import itertools

import pytest

from backend.domain.policy import Truth

T, F, U = Truth.TRUE, Truth.FALSE, Truth.UNKNOWN


@pytest.mark.parametrize(
    ("a", "b", "both", "either"),
    [
        (T, T, T, T),
        (T, F, F, T),
        (T, U, U, T),
        (F, F, F, F),
        (F, U, F, U),
        (U, U, U, U),
    ],
)
def test_kleene_tables(a: Truth, b: Truth, both: Truth, either: Truth) -> None:
    assert a & b is both
    assert b & a is both
    assert a | b is either
    assert b | a is either


def test_not() -> None:
    assert ~T is F
    assert ~F is T
    assert ~U is U


def test_de_morgan_holds_for_all_values() -> None:
    for a, b in itertools.product(Truth, repeat=2):
        assert ~(a & b) is (~a | ~b)
        assert ~(a | b) is (~a & ~b)


def test_truth_refuses_to_be_a_bool() -> None:
    with pytest.raises(TypeError, match="three values"):
        bool(Truth.UNKNOWN)


def test_of() -> None:
    assert Truth.of(True) is T
    assert Truth.of(False) is F
