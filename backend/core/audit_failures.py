"""Audit writes a process could not make, counted where Prometheus sees them.

A failed write leaves nothing in the log to count later, so each process counts its own as
they fail: the API in its Prometheus registry, the workers (other processes, often other
pods) in one Redis counter that the API's collector reads at scrape time, as it reads the
breakers and the queues.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
import structlog

from backend.core.audit_chain import AuditEvent, EventType
from backend.core.automation_audit_logger import AuditLogError, AuditLogger
from backend.core.lazy_redis import LazyRedis

log = structlog.get_logger(__name__)
WORKER_FAILURES_KEY = "finops:audit-write-failures:workers"


class CountedAuditLogError(AuditLogError):
    """An AuditLogError already counted where it was raised (so not again where it lands)."""


class CountingAuditLogger(AuditLogger):
    """An AuditLogger that reports each write it could not make, then raises as before."""

    def __init__(self, *, on_failure: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_failure = on_failure

    def record(self, event_type: EventType | str, **kwargs: Any) -> AuditEvent:
        try:
            return super().record(event_type, **kwargs)
        except CountedAuditLogError:
            raise
        except AuditLogError as exc:
            self._on_failure()
            raise CountedAuditLogError(str(exc)) from exc


class RedisFailureCount:
    """The workers' shared count (never reset: Prometheus takes its increase)."""

    def __init__(self, url: str, *, timeout: float = 0.5) -> None:
        self._redis = LazyRedis(url, timeout=timeout)

    def increment(self) -> None:
        """Counted if Redis answers; the failure is logged at ERROR either way (the audit
        error itself still reaches the caller)."""
        try:
            self._redis().incr(WORKER_FAILURES_KEY)
        except redis.RedisError as exc:
            log.error("audit write failure not counted: Redis unavailable", error=str(exc))

    def read(self) -> int:
        """The count so far (0 before the first failure); RedisError when Redis is down."""
        value = self._redis().get(WORKER_FAILURES_KEY)
        return int(value) if value is not None else 0
