"""Opportunity ids are keys: resource_pk * 8192 + the policy's number, numbers given once."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import PolicyNumberRow
from backend.core.opportunity_keys import (
    PolicyNumbersExhaustedError,
    opportunity_id,
    policy_numbers,
)


def test_each_name_gets_a_number_once_and_keeps_it(any_database: str) -> None:
    upgrade()
    with session_scope() as session:
        first = policy_numbers(session.connection(), ["stop-idle", "delete-unattached"])
    assert first == {"delete-unattached": 1, "stop-idle": 2}  # new names in name order
    with session_scope() as session:
        again = policy_numbers(session.connection(), ["stop-idle", "a-new-one", "stop-idle"])
    assert again == {"stop-idle": 2, "a-new-one": 3}  # known kept, new after the largest


def test_no_number_is_given_past_what_an_id_holds(any_database: str) -> None:
    upgrade()
    with session_scope() as session:
        session.execute(insert(PolicyNumberRow), [{"number": 8191, "policy_name": "last"}])
    with (
        pytest.raises(PolicyNumbersExhaustedError, match="8191 of the 8191"),
        session_scope() as session,
    ):
        policy_numbers(session.connection(), ["one-too-many"])
    with session_scope() as session:  # a known name still has its number
        assert policy_numbers(session.connection(), ["last"]) == {"last": 8191}


def test_an_id_packs_the_resource_and_the_policy() -> None:
    assert opportunity_id(5, 3) == 5 * 8192 + 3
    assert opportunity_id(2**40 - 1, 8191) < 2**53  # exact as a JavaScript number
    for resource_pk, number in [(0, 1), (2**40, 1), (1, 0), (1, 8192)]:
        with pytest.raises(ValueError, match="outside"):
            opportunity_id(resource_pk, number)
