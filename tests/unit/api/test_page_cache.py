"""The read cache's pure parts: page keys, the next page's query, the store's rules."""

from __future__ import annotations

import json
import time

import pytest

from backend.api import change_feed
from backend.api.change_feed import ChangeFeed
from backend.api.page_cache import CachedPage, PageCache, next_page_query, page_key

PATH = "/api/v1/inventory"


def page(version: tuple[int, ...], body: bytes = b"{}", **kw: object) -> CachedPage:
    values: dict[str, object] = {
        "version": version,
        "stored_at": time.monotonic(),
        "fresh_until": None,
        "headers": [(b"content-type", b"application/json")],
        "body": body,
        "route": None,
        "next_query": None,
        **kw,
    }
    return CachedPage(**values)  # type: ignore[arg-type]


class ListeningFeed(ChangeFeed):
    """A feed that listens without a database: versions move by bump() alone."""

    def __init__(self) -> None:
        super().__init__("postgresql://nowhere/none")
        self._set_listening(True)


def test_one_page_whatever_the_order_of_its_parameters() -> None:
    a = page_key(PATH, b"limit=50&kind=ebs&cursor=abc")
    b = page_key(PATH, b"cursor=abc&kind=ebs&limit=50")
    assert a == b
    # repeated parameters keep their order: the answer's filters are the same either way,
    # but two orders are simply two keys
    assert page_key(PATH, b"kind=ebs&kind=ec2") != page_key(PATH, b"limit=50")
    assert page_key(PATH, b"tag=team%3Da") == page_key(PATH, b"tag=team=a")


def test_the_next_page_is_asked_by_its_cursor_with_the_same_filters() -> None:
    key = page_key(PATH, b"kind=ebs&limit=50&cursor=first")
    body = json.dumps({"items": [], "next_cursor": "second"}).encode()
    assert next_page_query(key, body) == page_key(PATH, b"kind=ebs&limit=50&cursor=second")[1]
    last = json.dumps({"items": [], "next_cursor": None}).encode()
    assert next_page_query(key, last) is None
    by_offset = page_key(PATH, b"limit=50&offset=100")
    assert next_page_query(by_offset, body) is None  # such a client asks for offset=150
    assert next_page_query(key, b"not json") is None


def test_a_page_is_kept_only_under_the_version_it_was_read_at() -> None:
    feed = ListeningFeed()
    cache = PageCache(feed, 2**20, 30.0)
    key = page_key(PATH, b"limit=50")
    read_at = feed.version(("resources",))
    assert read_at is not None
    feed.bump("resources")  # a commit while it was being read
    assert not cache.put(key, page(read_at))
    current = feed.version(("resources",))
    assert current is not None and cache.put(key, page(current))
    assert cache.get(key, current) is not None
    feed.bump("actions")  # another table: still current
    assert cache.get(key, feed.version(("resources",)) or ()) is not None
    feed.bump()  # a notification may have been missed: everything goes
    assert cache.get(key, feed.version(("resources",)) or ()) is None


def test_the_least_recently_used_pages_go_past_the_budget() -> None:
    feed = ListeningFeed()
    cache = PageCache(feed, 6_000, 30.0)  # three pages of 900 bytes and what they hold
    version = feed.version(("resources",))
    assert version is not None
    keys = [page_key(PATH, f"limit={n}".encode()) for n in range(1, 5)]
    for key in keys[:3]:
        assert cache.put(key, page(version, b"x" * 900))
    assert cache.get(keys[0], version) is not None  # used: the second is now the oldest
    cache.put(keys[3], page(version, b"x" * 900))
    assert cache.get(keys[1], version) is None
    assert all(cache.get(k, version) is not None for k in (keys[0], keys[2], keys[3]))
    assert not cache.put(page_key(PATH, b"limit=9"), page(version, b"x" * 7_000))


def test_a_page_past_its_age_is_due_and_one_past_its_fresh_until_is_gone() -> None:
    feed = ListeningFeed()
    cache = PageCache(feed, 2**20, 30.0)
    version = feed.version(("actions",))
    assert version is not None
    key = page_key("/api/v1/actions", b"")
    old = page(version, stored_at=time.monotonic() - 31)
    cache.put(key, old)
    assert cache.get(key, version) is old and cache.due(old)
    # its reading again never stored: past twice the age it is no longer answered
    cache.put(key, page(version, stored_at=time.monotonic() - 61))
    assert cache.get(key, version) is None
    cache.put(key, page(version, fresh_until=time.time() - 1))
    assert cache.get(key, version) is None


def test_a_feed_the_server_stopped_answering_is_not_listening(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feed = ListeningFeed()
    assert feed.listening and feed.version(("users",)) is not None
    monkeypatch.setattr(change_feed, "_SILENT_SECONDS", 0.0)  # its last answer is too old
    assert not feed.listening and feed.version(("users",)) is None


def run_write(feed: ChangeFeed, status: int | None) -> tuple[object, object, object]:
    """POST through ReadCache to an app answering `status` (None: raising before any
    answer): the actions' version before, as the answer starts, and after."""
    import asyncio
    import contextlib

    from backend.api.read_cache import ReadCache
    from backend.api.token_cache import TokenCache

    seen: list[object] = []

    async def app(scope: object, receive: object, send: object) -> None:
        if status is None:
            raise RuntimeError("failed before answering")
        await send({"type": "http.response.start", "status": status, "headers": []})  # type: ignore[operator]
        seen.append(feed.version(("actions",)))  # the client may ask again from here on
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    async def send(message: object) -> None:
        return None

    cache = ReadCache(app, PageCache(feed, 2**20, 30.0), TokenCache(feed))  # type: ignore[arg-type]
    before = feed.version(("actions",))
    scope = {"type": "http", "method": "POST", "path": "/api/v1/x", "headers": []}
    with contextlib.suppress(RuntimeError):
        asyncio.run(cache(scope, None, send))  # type: ignore[arg-type]
    return before, (seen or [None])[0], feed.version(("actions",))


def test_a_write_ends_the_kept_pages_as_its_answer_starts_and_a_refusal_ends_none() -> None:
    feed = ListeningFeed()
    before, answering, _ = run_write(feed, 200)
    assert answering != before  # not only once the app (and its session's close) is done
    before, answering, after = run_write(feed, 401)
    assert answering == before and after == before
    before, _, after = run_write(feed, None)
    assert after != before
