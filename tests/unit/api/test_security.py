"""Roles, tokens and passwords: the primitives."""

from __future__ import annotations

import pytest

from backend.api.security import (
    Role,
    check_username,
    hash_password,
    hash_token,
    new_token,
    verify_password,
)


def test_each_role_includes_the_ones_below_it() -> None:
    order = [Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.ADMINISTRATOR]
    for i, role in enumerate(order):
        assert [role.allows(other) for other in order] == [j <= i for j in range(len(order))]


def test_tokens_are_random_prefixed_and_stored_as_a_stable_hash() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert token.startswith("fo_") and len(token) >= 46  # 32 random bytes, base64url
    assert hash_token(token) == hash_token(token) and len(hash_token(token)) == 64
    assert token not in hash_token(token) and hash_token(token) != hash_token(token + "x")


def test_passwords_are_salted_scrypt_and_verified_in_constant_time() -> None:
    first, second = hash_password("correct horse battery"), hash_password("correct horse battery")
    assert first != second and first.startswith("scrypt$")  # a fresh salt each time
    assert verify_password("correct horse battery", first)
    assert not verify_password("correct horse batterz", first)
    assert not verify_password("anything", None)
    assert not verify_password("anything", "md5$abc")
    assert not verify_password("anything", "scrypt$x$y")
    with pytest.raises(ValueError, match="12 characters"):
        hash_password("short")


@pytest.mark.parametrize("name", ["alice", "ops.bob", "carol_2", "d-e"])
def test_user_names_that_are_accepted(name: str) -> None:
    assert check_username(f" {name} ") == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Alice", "not a valid"),
        ("a", "not a valid"),
        ("1abc", "not a valid"),
        ("policy:x", "not a valid"),
        ("user@host", "not a valid"),
        ("system", "reserved"),
        ("cli", "reserved"),
    ],
)
def test_user_names_that_could_pass_for_an_engine_actor_are_refused(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_username(name)
