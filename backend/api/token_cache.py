"""Token checks without a database round trip, for as long as nothing about them changed.

A request's token was read from the database on every call: a round trip, and a thread
hop, for an answer that changes only when a token is revoked or a user changed. This keeps
each valid token's record (by the token's SHA-256, never the token) under the change feed's
version of `api_tokens` and `users`: a revocation, an expiry moved, a role changed or a
user disabled commits a notification, and every record read before it is dropped. Expiry is
checked on every request against the record. Without the feed (SQLite, or its connection
lost) nothing is kept and every request reads the database, as before.
"""

from __future__ import annotations

from backend.api.accounts import TokenRecord
from backend.api.change_feed import ChangeFeed, Version
from backend.api.token_map import ByToken

MAX_TOKENS = 10_000  # records kept per process; the least recently used go first
TABLES = ("api_tokens", "users")


class TokenCache:
    def __init__(self, feed: ChangeFeed | None, size: int = MAX_TOKENS) -> None:
        self._feed = feed
        self._records: ByToken[tuple[Version, TokenRecord]] = ByToken(size)

    def version(self) -> Version | None:
        """Read it before the database: a record read after a change but stored under the
        version from before the change's notification would be kept stale."""
        return None if self._feed is None else self._feed.version(TABLES)

    def get(self, token: str) -> TokenRecord | None:
        current = self.version()
        if current is None:
            return None
        found = self._records.get(token, touch=True)
        if found is None:
            return None
        if found[0] != current:
            self._records.pop(token)  # read before a change: dropped
            return None
        return found[1]

    def put(self, token: str, record: TokenRecord, version: Version | None) -> None:
        """Keep a record read under `version`, unless a change has been seen since."""
        if version is None or version != self.version():
            return
        self._records.put(token, (version, record))

    def forget(self, token: str) -> None:
        self._records.pop(token)
