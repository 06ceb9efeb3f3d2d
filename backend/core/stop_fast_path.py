"""The emergency stop's fast path: one Redis key every worker reads before each claim.

The database stays the system of record: this key can only add a stop (EmergencyStop reads
the database first, and "not engaged" here never lifts a stop there). After `FLUSHDB` the key
is gone, and the database still stops everything.
"""

from __future__ import annotations

from backend.core.lazy_redis import LazyRedis

STOP_KEY = "finops:emergency-stop"


class RedisStopSignal:
    def __init__(self, url: str, *, timeout: float = 0.5) -> None:
        self._redis = LazyRedis(url, timeout=timeout)

    def is_engaged(self) -> bool:
        return bool(self._redis().exists(STOP_KEY))

    def mirror(self, engaged: bool, reason: str | None) -> None:
        if engaged:
            self._redis().set(STOP_KEY, reason or "engaged")
        else:
            self._redis().delete(STOP_KEY)
