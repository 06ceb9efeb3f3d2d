"""The emergency stop's way in while the database is down.

Every request checks its token in the database (or in the token cache, which the database's
change feed keeps, and which is off while the database is unreachable). Engaging the
emergency stop must not need it: with the database down, the stop still reaches the workers
through its Redis key, which every worker reads before each claim and each AWS call.

So each API process remembers, for BREAK_GLASS_WINDOW, each operator's (or higher) token it
last checked in full, by the token's hash. `POST /emergency-stop` alone accepts such a token
when the check cannot reach the database. A token revoked within that window can, at most,
stop the automation: the safe direction. Expiry and the rest of the record are checked
again as stored.
"""

from __future__ import annotations

import datetime as dt

from backend.api.accounts import TokenRecord
from backend.api.security import Role
from backend.api.token_map import ByToken

BREAK_GLASS_WINDOW = dt.timedelta(minutes=15)
MAX_REMEMBERED = 1_000  # tokens per process; the least recently checked go first


class RecentOperators:
    def __init__(
        self, window: dt.timedelta = BREAK_GLASS_WINDOW, size: int = MAX_REMEMBERED
    ) -> None:
        self._window = window
        self._checked: ByToken[tuple[dt.datetime, TokenRecord]] = ByToken(size)

    def remember(self, token: str, record: TokenRecord, now: dt.datetime) -> None:
        """A token that passed a full check now; kept only if it may engage the stop (a
        user demoted since is forgotten)."""
        if not record.principal.role.allows(Role.OPERATOR):
            self.forget(token)
            return
        self._checked.put(token, (now, record))

    def recall(self, token: str, now: dt.datetime) -> TokenRecord | None:
        """The record of a token checked within the window, else None."""
        found = self._checked.get(token)
        if found is None or now - found[0] > self._window:
            return None
        return found[1]

    def forget(self, token: str) -> None:
        """A token the database refused (revoked, expired, its user disabled)."""
        self._checked.pop(token)
