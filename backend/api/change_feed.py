"""What the API's read caches need to know: that something they hold may have changed.

PostgreSQL triggers (migration 0010) notify the channel `finops_change`, with the table's
name, when a transaction that wrote a table behind the caches commits: `resources`,
`opportunities`, `actions`, and `api_tokens` and `users` when a token check could change.
One thread per API process listens on a connection of its own and counts them per table.
A cache keeps what it read with the `version` of the tables it read; anything kept under an
older version is stale.

Caching is allowed only while the feed listens. When its connection is lost, a
notification may be lost with it, so the version of every table moves on (everything
cached is dropped), nothing is cached until it listens again, and it moves on once more
then. A commit reaches the caches when its notification arrives, a few milliseconds after
the commit: that is the staleness the caches allow, and `bump` closes it for writes made
through the same process.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import psycopg
import structlog
from sqlalchemy.engine import make_url

log = structlog.get_logger(__name__)
CHANNEL = "finops_change"
APPLICATION_NAME = "finops-change-feed"  # how pg_stat_activity shows its connection
_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)  # between reconnections: quick at first, then calmer
_POLL_SECONDS = 0.2  # how often the listening thread looks up to see whether to stop
# A connection can stay open to a server that no longer answers (paused, or its host gone
# with the kernel still holding the socket): the feed pings every HEARTBEAT seconds, and a
# feed whose last answer is older than SILENT counts as not listening.
_HEARTBEAT_SECONDS = 2.0
_SILENT_SECONDS = 6.0

Version = tuple[int, ...]


class ChangeFeed:
    """Versions of tables, from their notifications; listening once `start` has connected."""

    def __init__(self, database_url: str, connect_args: Mapping[str, Any] | None = None) -> None:
        self._conninfo = (
            make_url(database_url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        self._connect_args = {**(connect_args or {}), "application_name": APPLICATION_NAME}
        self._lock = threading.Lock()
        self._listening = False
        self._answered_at = 0.0  # time.monotonic() of the server's last answer
        self._epoch = 0  # moves on whenever a notification may have been missed
        self._changes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def listening(self) -> bool:
        with self._lock:
            return self._heard_lately()

    def version(self, tables: tuple[str, ...]) -> Version | None:
        """The tables' version, or None when nothing may be cached (not listening)."""
        with self._lock:
            if not self._heard_lately():
                return None
            return (self._epoch, *(self._changes[t] for t in tables))

    def bump(self, *tables: str) -> None:
        """What was read from the tables (all of them, when none is named) is stale."""
        with self._lock:
            if tables:
                self._changes.update(tables)
            else:
                self._epoch += 1

    def start(self) -> None:
        self._stop.clear()
        if self._thread is not None and self._thread.is_alive():
            return  # a stop that timed out: the same thread goes on
        self._thread = threading.Thread(target=self._run, name="finops-change-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening; the thread ends within `timeout`, or, blocked on a server that
        does not answer, when it does (it is a daemon: it never holds the process)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._thread = None
        self._set_listening(False)

    def _heard_lately(self) -> bool:
        return self._listening and time.monotonic() - self._answered_at < _SILENT_SECONDS

    def _set_listening(self, listening: bool) -> None:
        with self._lock:
            self._listening = listening
            self._answered_at = time.monotonic()
            self._epoch += 1

    def _run(self) -> None:
        failures = 0  # in a row, without listening in between
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # noqa: BLE001 - any failure: caches off, and try again
                failures = 0 if self._listening else failures + 1
                wait = _RETRY_SECONDS[min(failures, len(_RETRY_SECONDS) - 1)]
                log.warning("read caches off: change feed lost", error=str(exc), retry_in=wait)
                self._set_listening(False)
                self._stop.wait(wait)

    def _listen(self) -> None:
        with psycopg.connect(self._conninfo, autocommit=True, **self._connect_args) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._set_listening(True)  # what was read before LISTEN is stale from here
            log.info("read caches on: change feed listening")
            while not self._stop.is_set():
                for notice in conn.notifies(timeout=_POLL_SECONDS):
                    self.bump(notice.payload)
                if time.monotonic() - self._answered_at >= _HEARTBEAT_SECONDS:
                    conn.execute("SELECT 1")
                    with self._lock:
                        if not self._heard_lately():  # it was silent: caches were off
                            self._epoch += 1
                        self._answered_at = time.monotonic()
