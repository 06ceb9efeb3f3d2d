"""The ASGI middleware that answers list pages from memory (the pages: page_cache.py).

Only a caller whose token the token cache vouches for, valid now and with nothing to record,
is answered from memory; any other request goes to the routes, which check it in full.
A write through this process (any method but GET, HEAD and OPTIONS) moves every version on
as it ends, so the writer reads what it wrote without waiting for the notification.

Three things keep a page read from the database from costing more than once:
- a request for a page that another request is reading waits for that read, and is
  answered with its page, rather than reading it again (clients walking a list together
  ask for the same next page at the same moment);
- read-ahead: answering a page of a list, the middleware reads the next READ_AHEAD pages
  that are not kept yet, in the background, as a client walking the list will ask for them
  (at most MAX_READING_AHEAD such reads at once per process; when busy, it reads none);
- a page kept longer than FINOPS_API_READ_CACHE_SECONDS with no change notified is still
  answered, and read again in the background for the requests after it (so that pages
  read together, as the first pages of every list are, do not all expire into a queue of
  clients waiting at the same moment).

Every answer says where it came from in `X-Finops-Read-Cache`: hit, shared (it waited for
another request's read), miss (the routes answered) or off (no change feed: SQLite, or its
connection lost).
"""

from __future__ import annotations

import asyncio
import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.api.change_feed import Version
from backend.api.page_cache import (
    FRESH_UNTIL,
    TABLES,
    CachedPage,
    Key,
    PageCache,
    next_page_query,
    page_key,
)
from backend.api.token_cache import TokenCache
from backend.core.types import utcnow

log = structlog.get_logger(__name__)
HEADER = b"x-finops-read-cache"
READ_AHEAD = 3
MAX_READING_AHEAD = 3
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # requests that change nothing
# Answers given before a route does anything: no token, no role, no such route or method,
# an invalid request.
REFUSALS = frozenset({401, 403, 404, 405, 422})
_FRESH_UNTIL = FRESH_UNTIL.encode()


class ReadCache:
    def __init__(self, app: ASGIApp, pages: PageCache, tokens: TokenCache) -> None:
        self.app, self.pages, self.tokens = app, pages, tokens
        self._reading: dict[Key, asyncio.Future[CachedPage | None]] = {}
        self._ahead: set[asyncio.Task[None]] = set()  # referenced until done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["method"] not in READ_METHODS:
            await self._write(scope, receive, send)
        elif scope["method"] != "GET" or scope["path"] not in TABLES:
            await self.app(scope, receive, send)
        else:
            await self._list_page(scope, receive, send)

    async def _write(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request that may change state: every kept page ends as its answer starts, so
        that its client, asking again at once, reads what it wrote (a notification comes
        a few milliseconds later; FastAPI closes the request's session after answering).
        Answers that refuse before any work (REFUSALS) end nothing: else anyone could keep
        the caches empty with requests bound to fail."""
        started = False

        async def ending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] not in REFUSALS:
                    self._end_kept()
            await send(message)

        try:
            await self.app(scope, receive, ending)
        finally:
            if not started:  # it failed before answering: whatever it did, end them too
                self._end_kept()

    def _end_kept(self) -> None:
        if self.pages.feed is not None:
            self.pages.feed.bump()

    async def _list_page(self, scope: Scope, receive: Receive, send: Send) -> None:
        version = self.pages.version(scope["path"])
        if version is None:
            await self.app(scope, receive, _labelled(send, b"off"))
            return
        incoming = dict(scope)  # before the routes add to it: read-ahead starts from it
        key = page_key(scope["path"], scope["query_string"])
        page: CachedPage | None = None
        if self._vouched(scope):
            page, label = self.pages.get(key, version), b"hit"
            reading = self._reading.get(key)
            if page is None and reading is not None:
                page, label = await asyncio.shield(reading), b"shared"
            if page is not None:
                scope["route"] = page.route
                await send(_start([*page.headers, (HEADER, label)]))
                await send({"type": "http.response.body", "body": page.body})
                if self.pages.due(page):
                    self._read_later(incoming, key, 0)
        if page is None:
            page = await self._read(scope, receive, send, key, version)
        if page is not None:
            self._read_ahead(incoming, key, page, READ_AHEAD)

    def _vouched(self, scope: Scope) -> bool:
        """The caller's token is cached, valid now, and has no last use due to record."""
        token = _bearer(scope)
        record = None if token is None else self.tokens.get(token)
        if record is None:
            return False
        try:
            _, due = record.check(utcnow())
        except Exception:  # noqa: BLE001 - expired, say: the routes answer it in full
            return False
        return not due

    async def _read(
        self, scope: Scope, receive: Receive, send: Send, key: Key, version: Version
    ) -> CachedPage | None:
        """The routes' answer, sent; the page when it was kept (still current)."""
        reading = None
        if key not in self._reading:
            reading = self._reading[key] = asyncio.get_running_loop().create_future()
        kept: CachedPage | None = None
        try:
            kept = await self._answer_and_keep(scope, receive, send, key, version)
        finally:
            if reading is not None:
                del self._reading[key]
                reading.set_result(kept)
        return kept

    async def _answer_and_keep(
        self, scope: Scope, receive: Receive, send: Send, key: Key, version: Version
    ) -> CachedPage | None:
        status, complete = 0, False
        fresh_until: float | None = None
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def keeping(message: Message) -> None:
            nonlocal status, complete, fresh_until
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    if name == _FRESH_UNTIL:
                        fresh_until = float(value)
                    else:
                        headers.append((name, value))
                label = [(HEADER, b"miss")] if status == 200 else []
                message = {**message, "headers": [*headers, *label]}
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                complete = not message.get("more_body", False)
            await send(message)

        await self.app(scope, receive, keeping)
        if status != 200 or not complete:
            return None
        body = b"".join(chunks)
        page = CachedPage(
            version,
            time.monotonic(),
            fresh_until,
            headers,
            body,
            scope.get("route"),
            next_page_query(key, body),
        )
        return page if self.pages.put(key, page) else None

    def _read_ahead(self, incoming: Scope, key: Key, page: CachedPage, depth: int) -> None:
        """Start reading the first of the next `depth` pages not kept or being read."""
        for remaining in range(depth - 1, -1, -1):
            if page.next_query is None:
                return
            key = (key[0], page.next_query)
            kept = self.pages.get(key, page.version)
            if kept is None or self.pages.due(kept):
                self._read_later(incoming, key, remaining)
                return
            page = kept

    def _read_later(self, incoming: Scope, key: Key, remaining: int) -> None:
        """Read the page in the background (and `remaining` more after it), unless it is
        being read or MAX_READING_AHEAD background reads are running."""
        if key not in self._reading and len(self._ahead) < MAX_READING_AHEAD:
            task = asyncio.create_task(self._read_one_ahead(incoming, key, remaining))
            self._ahead.add(task)
            task.add_done_callback(self._ahead.discard)

    async def _read_one_ahead(self, incoming: Scope, key: Key, remaining: int) -> None:
        version = self.pages.version(key[0])
        if version is None:
            return
        scope = {**incoming, "query_string": key[1]}
        try:
            page = await self._read(scope, _no_body, _discard, key, version)
        except Exception as exc:  # noqa: BLE001 - nobody waits on it: the client will ask
            log.warning("reading ahead failed", path=key[0], error=str(exc))
            return
        if page is not None and remaining > 0:
            self._read_ahead(incoming, key, page, remaining)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Message) -> None:
    return None


def _start(headers: list[tuple[bytes, bytes]]) -> Message:
    return {"type": "http.response.start", "status": 200, "headers": headers}


def _labelled(send: Send, label: bytes) -> Send:
    """The answer with its source, without the routes' internal FRESH_UNTIL."""

    async def labelling(message: Message) -> None:
        if message["type"] == "http.response.start":
            kept = [(k, v) for k, v in message.get("headers", []) if k != _FRESH_UNTIL]
            message = {**message, "headers": [*kept, (HEADER, label)]}
        await send(message)

    return labelling


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    return None
