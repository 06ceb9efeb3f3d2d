"""Roles, API tokens and passwords: the primitives, with no database and no FastAPI.

Tokens are 256 random bits (`secrets.token_urlsafe(32)`) and stored as their SHA-256 only.
No salt and no slow hash: a salt defends low-entropy secrets against precomputed tables and
equal-password collisions, and a slow hash makes guessing expensive; a 256-bit random token
cannot be guessed or tabulated either way. A deterministic hash also lets a request find
its token by an indexed lookup instead of trying every stored salt. Passwords are people's
choices (low entropy), so they get scrypt with a random salt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from enum import StrEnum

TOKEN_PREFIX = "fo_"  # lets secret scanners and people recognise a leaked token
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1  # OWASP's scrypt minimum (about 16 MiB, 50 ms)
USERNAME = re.compile(r"^[a-z][a-z0-9._-]{1,63}$")
# Actors the engine itself writes into requested_by/approved_by: a person named like one
# could pass the planner's separation-of-duties check against it, so they are refused.
RESERVED_NAMES = frozenset({"system", "safety", "automation", "cli", "api", "admin", "root"})


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"
    ADMINISTRATOR = "administrator"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        """Each role may do everything the roles below it may."""
        return self.rank >= needed.rank


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    if len(password) < 12:
        raise ValueError("a password needs at least 12 characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return "$".join(
        ["scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P), _b64(salt), _b64(digest)]
    )


def verify_password(password: str, stored: str | None) -> bool:
    """Constant-time comparison; a missing or malformed hash never matches."""
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p)
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def check_username(name: str) -> str:
    name = name.strip()
    if not USERNAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid user name: 2-64 characters, lower-case letters, digits, "
            "'.', '_' or '-', starting with a letter"
        )
    if name in RESERVED_NAMES:
        raise ValueError(f"{name!r} is reserved for the engine's own actors")
    return name


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
