"""List pages kept in memory while nothing behind them has changed (read_cache.py serves them).

A page of the inventory or of the opportunities costs the API 7 to 12 ms of CPU (the token,
the page's query, its count, the JSON) and PostgreSQL 2 to 5 ms more; the same pages are
asked again and again (every dashboard opens on the first ones), and they change only when
a scan, an evaluation or an action commits. So the API keeps each answered page (its exact
path and query string, its body and headers) under the change feed's version of the tables
the list reads (TABLES), which every commit to one of them moves on (migration 0010), and
answers it again while that version holds and the page is younger than
FINOPS_API_READ_CACHE_SECONDS, or than the moment the route said it would change on its own
(FRESH_UNTIL: an approval that expires, say).

A page is kept by its path and its query string with the parameters in a canonical order,
so that `?limit=50&cursor=X` and `?cursor=X&limit=50` are one page. With it is kept the
query of the list's next page, for read-ahead.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from backend.api.change_feed import ChangeFeed, Version
from backend.core.types import utcnow

# The lists kept, and the tables each one reads. Each is open to every role (Viewer): a page
# is answered from memory to any caller with a valid token, so a list that needs more
# must not be added here.
TABLES = {
    "/api/v1/inventory": ("resources",),
    "/api/v1/opportunities": ("opportunities", "resources"),
    "/api/v1/actions": ("actions",),
}
# A route's page that turns stale at a known time without any write says when (POSIX
# seconds, by the database's clock): kept no longer, and never sent to the client.
FRESH_UNTIL = "x-finops-fresh-until"
MAX_PAGE_BYTES = 2**20  # a larger answer is not kept (500 rows of heavy tags, say)


@dataclass(frozen=True)
class CachedPage:
    version: Version
    stored_at: float  # time.monotonic()
    fresh_until: float | None  # utcnow().timestamp(), when the route gave one
    headers: list[tuple[bytes, bytes]]
    body: bytes
    route: Any  # the matched route, for the request metrics' label
    next_query: bytes | None  # the canonical query string of the list's next page

    @property
    def size(self) -> int:
        """Bytes held, roughly: the body, the headers, the next page's query, and what the
        objects around them cost (the key is counted by the cache)."""
        headers = sum(len(k) + len(v) + 100 for k, v in self.headers)
        return len(self.body) + headers + len(self.next_query or b"") + 600


Key = tuple[str, bytes]  # (path, canonical query string)


def page_key(path: str, query_string: bytes) -> Key:
    return path, _canonical(_pairs(query_string))


def _pairs(query_string: bytes) -> list[tuple[str, str]]:
    return parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)


def _canonical(pairs: list[tuple[str, str]]) -> bytes:
    """Parameters sorted by name; repeated ones keep their order."""
    return urlencode(sorted(pairs, key=lambda pair: pair[0])).encode("latin-1")


def next_page_query(key: Key, body: bytes) -> bytes | None:
    """The canonical query of the page after this one (its next_cursor), if there is one
    and this one was asked by cursor (or is the first): a client paging by offset asks
    for the next offset instead."""
    pairs = _pairs(key[1])
    if any(name == "offset" for name, _ in pairs):
        return None
    try:
        cursor = json.loads(body).get("next_cursor")
    except (ValueError, AttributeError):
        return None
    if not isinstance(cursor, str):
        return None
    kept = [(name, value) for name, value in pairs if name != "cursor"]
    return _canonical([*kept, ("cursor", cursor)])


class PageCache:
    """Pages by Key, least recently used dropped past `max_bytes`."""

    def __init__(self, feed: ChangeFeed | None, max_bytes: int, max_age_seconds: float) -> None:
        self.feed = feed
        self._max_bytes, self._max_age = max_bytes, max_age_seconds
        self._pages: OrderedDict[Key, CachedPage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def version(self, path: str) -> Version | None:
        return None if self.feed is None else self.feed.version(TABLES[path])

    def get(self, key: Key, version: Version) -> CachedPage | None:
        """The page kept under `version`, unless its route's FRESH_UNTIL has passed. It may
        be older than max_age: `due` says so, and the caller reads it again."""
        with self._lock:
            page = self._pages.get(key)
            if page is None:
                return None
            if (
                page.version != version
                or (page.fresh_until is not None and utcnow().timestamp() >= page.fresh_until)
                # its reading again failed, or never ran: the age bound holds all the same
                or time.monotonic() - page.stored_at >= 2 * self._max_age
            ):
                self._drop(key)
                return None
            self._pages.move_to_end(key)
            return page

    def due(self, page: CachedPage) -> bool:
        """Older than max_age: to be read again, though no change was notified (past twice
        that, `get` no longer answers it)."""
        return time.monotonic() - page.stored_at >= self._max_age

    def put(self, key: Key, page: CachedPage) -> bool:
        """Keep the page, unless something changed while it was read (it may be stale
        already) or it is too large; whether it was kept."""
        too_large = _held(key, page) > min(MAX_PAGE_BYTES, self._max_bytes)
        if page.version != self.version(key[0]) or too_large:
            return False
        with self._lock:
            self._drop(key)
            self._pages[key] = page
            self._bytes += _held(key, page)
            while self._bytes > self._max_bytes:
                self._drop(next(iter(self._pages)))
        return True

    def _drop(self, key: Key) -> None:
        page = self._pages.pop(key, None)
        if page is not None:
            self._bytes -= _held(key, page)


def _held(key: Key, page: CachedPage) -> int:
    return len(key[0]) + len(key[1]) + page.size
