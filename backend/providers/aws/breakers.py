"""Circuit breakers per (account, region, service), shared by every worker process via Redis.

One pybreaker.CircuitBreaker per key holds the closed / open / half-open state, in Redis when a
URL is given (all workers see one state) or in memory (embedded mode). pybreaker's own trip
rule is N *consecutive* failures: one success amid heavy throttling resets it, and a busy
endpoint failing half its calls would never trip. So the trip decision is ours, a failure
rate: open when the last `window` seconds hold >= `min_calls` calls and >= `failure_ratio` of
them failed. The window is counted in time buckets (self-expiring counters in Redis, or a
dict), so it is shared exactly like the state. After `reset_timeout` one trial call goes through
(a Redis SET NX token, so one per key across processes); its success closes the breaker.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

import pybreaker
import redis
import structlog
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from redis.backoff import NoBackoff
from redis.retry import Retry

from backend.providers.aws import retry

log = structlog.get_logger(__name__)
T = TypeVar("T")
BUCKETS = 6  # the window is counted in this many slices; it slides one slice at a time
_TRIAL = "finops_breaker_trial"  # request-context flag: this call is the half-open trial


class BreakerKey(NamedTuple):
    account: str  # an account id, or "self" for the caller's own credentials
    region: str
    service: str

    @property
    def label(self) -> str:
        return f"{self.account}/{self.region}/{self.service}"


@dataclass(frozen=True)
class BreakerState:
    key: BreakerKey
    state: str  # pybreaker.STATE_CLOSED | STATE_OPEN | STATE_HALF_OPEN
    failures: int  # in the window
    calls: int  # in the window
    failure_rate: float | None  # failures / calls; None without calls
    opened_at: datetime | None
    retry_after: datetime | None  # None when closed
    last_error: str | None


class CircuitOpenError(pybreaker.CircuitBreakerError):
    """Refused without calling AWS; not retryable (retry.is_retryable says no to it)."""

    def __init__(self, key: BreakerKey, retry_after: datetime | None, why: str) -> None:
        self.key = key
        self.retry_after = retry_after
        when = f"until {retry_after:%Y-%m-%d %H:%M:%S}Z" if retry_after else "until a trial ends"
        super().__init__(
            f"circuit breaker open for AWS {key.service} in account {key.account}, region "
            f"{key.region} ({why}); calls refused {when}, then one trial call is let through"
        )


def counts_as_failure(code: str | None, status: int) -> bool:
    """Throttling, 5xx and refused access say the endpoint is unusable for us; a NotFound or
    InvalidParameter is an answer from a healthy service."""
    codes = retry.THROTTLING_CODES | retry.TRANSIENT_CODES | retry.ACCESS_CODES
    return code in codes or status >= 500


def classify(exc: BaseException) -> bool | None:
    """True: a failure; False: AWS answered; None: says nothing about AWS (a local error)."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return counts_as_failure(retry.error_code(exc), int(status or 0))
    if isinstance(exc, HTTPClientError | BotoConnectionError):
        return True
    return None


class _MemoryStore:
    """The few Redis commands we use, on a dict; keys expire by the registry's clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock, self._lock, self._sweep_at = clock, threading.Lock(), 1000
        self._data: dict[str, tuple[str, float]] = {}  # key -> (value, expires at)

    def _live(self, key: str, now: float) -> str | None:
        value, until = self._data.get(key, ("", 0.0))
        return value if until > now else None

    def incr(self, keys: list[str], ttl: float) -> None:
        with self._lock:
            now = self._clock()
            for k in keys:
                self._data[k] = (str(int(self._live(k, now) or 0) + 1), now + ttl)
            if len(self._data) > self._sweep_at:  # amortised: expired buckets do not pile up
                self._data = {k: v for k, v in self._data.items() if v[1] > now}
                self._sweep_at = 2 * len(self._data) + 1000

    def ints(self, keys: list[str]) -> list[int]:
        with self._lock:
            now = self._clock()
            return [int(self._live(k, now) or 0) for k in keys]

    def put(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> bool:
        with self._lock:
            now = self._clock()
            if only_new and self._live(key, now) is not None:
                return False
            self._data[key] = (value, now + ttl)
            return True

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._live(key, self._clock())

    def delete(self, keys: list[str]) -> None:
        with self._lock:
            for k in keys:
                self._data.pop(k, None)


class _RedisStore:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    def incr(self, keys: list[str], ttl: float) -> None:
        pipe = self._r.pipeline(transaction=False)
        for k in keys:
            pipe.incr(k)
            pipe.expire(k, math.ceil(ttl))
        pipe.execute()

    def ints(self, keys: list[str]) -> list[int]:
        return [int(v or 0) for v in self._r.mget(keys)]

    def put(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> bool:
        return bool(self._r.set(key, value, px=math.ceil(ttl * 1000), nx=only_new))

    def get(self, key: str) -> str | None:
        value = self._r.get(key)
        return value.decode() if isinstance(value, bytes) else None

    def delete(self, keys: list[str]) -> None:
        self._r.delete(*keys)


class BreakerRegistry:
    """One breaker per key; `attach` routes every call of a botocore client through one.

    Keys under `<prefix>:<account>:<region>:<service>`: pybreaker's `:pybreaker:state`,
    `:pybreaker:opened_at` and counters; ours, all expiring: `:calls:<bucket>`,
    `:fails:<bucket>`, `:last_error` and the half-open `:trial` token.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        redis_client: redis.Redis | None = None,
        reset_timeout: float = 30.0,
        window: float = 60.0,
        min_calls: int = 20,
        failure_ratio: float = 0.5,
        trial_ttl: float = 90.0,  # a trial whose worker died frees the key after this
        clock: Callable[[], float] = time.time,
        prefix: str = "finops:breaker",
    ) -> None:
        if redis_client is None and redis_url:
            # No connection until the first command. Every AWS call asks Redis, so: short
            # timeouts, one immediate retry (a stale pooled connection), no backoff; a Redis
            # error then lets the AWS call through (see _guarded).
            redis_client = redis.Redis.from_url(
                redis_url,
                socket_connect_timeout=1,
                socket_timeout=1,
                retry=Retry(NoBackoff(), 1),
            )
        self._redis = redis_client
        self._store = _RedisStore(redis_client) if redis_client else _MemoryStore(clock)
        self.reset_timeout, self.window, self.trial_ttl = reset_timeout, window, trial_ttl
        self.min_calls, self.failure_ratio = min_calls, failure_ratio
        self._clock, self._prefix = clock, prefix
        self._lock = threading.Lock()
        self._entries: dict[BreakerKey, tuple[pybreaker.CircuitBreaker, Any]] = {}

    @property
    def shared(self) -> bool:
        return self._redis is not None

    def _entry(self, key: BreakerKey) -> tuple[pybreaker.CircuitBreaker, Any]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                closed = pybreaker.STATE_CLOSED
                storage: Any = (
                    pybreaker.CircuitRedisStorage(closed, self._redis, namespace=self._ns(key))
                    if self._redis is not None
                    else pybreaker.CircuitMemoryStorage(closed)
                )
                # fail_max is unused: we never call breaker.call(); the rate rule trips it.
                breaker = pybreaker.CircuitBreaker(
                    reset_timeout=self.reset_timeout, state_storage=storage, name=key.label
                )
                entry = self._entries[key] = (breaker, storage)
            return entry

    def _ns(self, key: BreakerKey) -> str:
        return f"{self._prefix}:{key.account}:{key.region}:{key.service}"

    def _window(self, key: BreakerKey) -> tuple[list[str], list[str]]:
        """The calls and fails keys of the window's buckets, the current one last."""
        now = int(self._clock() // (self.window / BUCKETS))
        ns, buckets = self._ns(key), range(now - BUCKETS + 1, now + 1)
        return [f"{ns}:calls:{b}" for b in buckets], [f"{ns}:fails:{b}" for b in buckets]

    def _totals(self, key: BreakerKey) -> tuple[int, int]:
        calls, fails = self._window(key)
        counts = self._store.ints(calls + fails)
        return sum(counts[:BUCKETS]), sum(counts[BUCKETS:])

    def _retry_at(self, storage: Any) -> float | None:
        opened: datetime | None = storage.opened_at
        return opened.timestamp() + self.reset_timeout if opened else None

    def before_call(self, key: BreakerKey) -> bool:
        """Refuse a call while open; True when this call is the half-open trial."""
        breaker, storage = self._entry(key)
        state = breaker.current_state
        if state == pybreaker.STATE_CLOSED:
            return False
        retry_at = self._retry_at(storage)
        if state == pybreaker.STATE_OPEN and retry_at and self._clock() < retry_at:
            last = self._store.get(f"{self._ns(key)}:last_error")
            raise CircuitOpenError(key, _dt(retry_at), f"too many failures; last: {last}")
        if not self._store.put(f"{self._ns(key)}:trial", "1", self.trial_ttl, only_new=True):
            raise CircuitOpenError(key, None, "a trial call is in progress")
        if state == pybreaker.STATE_OPEN:
            breaker.half_open()
        return True

    def record(
        self, key: BreakerKey, failed: bool | None, *, trial: bool = False, error: str = ""
    ) -> None:
        """Count one call's outcome (None: says nothing about AWS) and trip or close."""
        breaker, storage = self._entry(key)
        calls_keys, fails_keys = self._window(key)
        ttl = self.window + self.window / BUCKETS
        try:
            if failed is None:
                return
            if trial and not failed:
                breaker.close()  # and a fresh window: old failures must not reopen it at once
                self._store.delete([*calls_keys, *fails_keys, f"{self._ns(key)}:last_error"])
            self._store.incr([calls_keys[-1], fails_keys[-1]] if failed else calls_keys[-1:], ttl)
            if not failed:
                return
            self._store.put(f"{self._ns(key)}:last_error", error, ttl)
            calls, fails = self._totals(key)
            tripped = calls >= self.min_calls and fails >= self.failure_ratio * calls
            if trial or (tripped and breaker.current_state == pybreaker.STATE_CLOSED):
                breaker.open()
                # pybreaker stamps the wall clock: the same as ours in production, not a
                # test's clock (Redis keeps the later of the two).
                storage.opened_at = _dt(self._clock())
                log.warning("circuit breaker opened", key=key.label, calls=calls, fails=fails)
        finally:
            if trial:
                self._store.delete([f"{self._ns(key)}:trial"])

    def status(self, key: BreakerKey) -> BreakerState:
        breaker, storage = self._entry(key)
        calls, fails = self._totals(key)
        state, retry_at = breaker.current_state, self._retry_at(storage)
        retry_after = _dt(retry_at) if retry_at and state != pybreaker.STATE_CLOSED else None
        rate = fails / calls if calls else None
        last = self._store.get(f"{self._ns(key)}:last_error")
        return BreakerState(key, state, fails, calls, rate, storage.opened_at, retry_after, last)

    def states(self) -> list[BreakerState]:
        """Every key this process used, and (with Redis) every key any process used."""
        keys = set(self._entries)
        if self._redis is not None:
            suffix = ":pybreaker:state"
            for raw in self._redis.scan_iter(match=f"{self._prefix}:*{suffix}", count=500):
                parts = raw.decode()[len(self._prefix) + 1 : -len(suffix)].split(":")
                if len(parts) == 3:
                    keys.add(BreakerKey(*parts))
        return [self.status(k) for k in sorted(keys)]

    def open_breakers(self) -> list[BreakerState]:
        """The open and half-open breakers, for status reports."""
        return [s for s in self.states() if s.state != pybreaker.STATE_CLOSED]

    def attach(self, client: Any, key: BreakerKey) -> None:
        """Route every call of this botocore client through the breaker for `key`."""

        def before(context: dict[str, Any], **_: Any) -> None:
            context[_TRIAL] = self._guarded(lambda: self.before_call(key), False)

        def after(
            http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
        ) -> None:
            status, err = int(http_response.status_code), parsed.get("Error", {})
            failed = status >= 300 and counts_as_failure(err.get("Code"), status)
            error = f"{err.get('Code')}: {err.get('Message', '')}"
            trial = bool(context.get(_TRIAL))
            self._guarded(lambda: self.record(key, failed, trial=trial, error=error), None)

        def after_error(exception: BaseException, context: dict[str, Any], **_: Any) -> None:
            failed, trial = classify(exception), bool(context.get(_TRIAL))
            error = retry.describe_error(exception)
            self._guarded(lambda: self.record(key, failed, trial=trial, error=error), None)

        client.meta.events.register("before-call", before)
        client.meta.events.register("after-call", after)
        client.meta.events.register("after-call-error", after_error)

    @staticmethod
    def _guarded(action: Callable[[], T], fallback: T) -> T:
        # A Redis outage must not stop AWS work: without the shared state, let calls through.
        try:
            return action()
        except redis.RedisError as exc:
            log.warning("circuit breaker state unavailable", error=str(exc))
            return fallback


def _dt(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
