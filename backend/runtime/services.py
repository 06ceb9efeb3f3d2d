"""What one worker process builds once and reuses across tasks.

One AwsClients (its connection pools and circuit breakers), the emergency stop with its Redis
fast path, the audit logger, the safety checker, and the effective policy pack, re-read at
most every PACK_TTL seconds so that a disabled or paused policy takes effect without a restart.
After a fork (Celery's prefork pool) `reset()` drops all of it, database engines included.
"""

from __future__ import annotations

import threading
import time

from backend.config import Settings, get_settings
from backend.core.action_engine import ActionEngine, worker_name
from backend.core.audit_failures import CountingAuditLogger, RedisFailureCount
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import dispose_engines, session_scope
from backend.core.emergency_stop import EmergencyStop
from backend.core.policy_manager import PolicyManager
from backend.core.safety_checker import SafetyChecker
from backend.core.stop_fast_path import RedisStopSignal
from backend.core.types import utcnow
from backend.domain.policy.model import PolicyPack
from backend.providers.aws.session import AwsClients

PACK_TTL = 60.0


class WorkerServices:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clients = AwsClients(endpoint_url=settings.aws_endpoint_url)
        # A write that fails is counted in Redis, where the API's /metrics reads it.
        self.audit = (
            CountingAuditLogger(on_failure=RedisFailureCount(settings.redis_url).increment)
            if settings.redis_url
            else AuditLogger()
        )
        fast_path = RedisStopSignal(settings.redis_url) if settings.redis_url else None
        self.emergency = EmergencyStop(audit=self.audit, fast_path=fast_path)
        self.safety = SafetyChecker(settings=settings)
        self._pack: tuple[float, PolicyPack] | None = None
        self._lock = threading.Lock()

    def pack(self) -> PolicyPack:
        """The policies as configured, with the database's enabled/paused state applied."""
        with self._lock:
            if self._pack is None or time.monotonic() - self._pack[0] > PACK_TTL:
                with session_scope() as session:
                    pack = PolicyManager().effective_pack(session, utcnow())
                self._pack = (time.monotonic(), pack)
            return self._pack[1]

    def engine(self) -> ActionEngine:
        return ActionEngine(
            settings=self.settings,
            clients=self.clients,
            safety=self.safety,
            audit=self.audit,
            emergency=self.emergency,
            pack=self.pack(),
            worker=worker_name(),
        )


_services: WorkerServices | None = None
_guard = threading.Lock()


def services() -> WorkerServices:
    global _services
    with _guard:
        if _services is None:
            _services = WorkerServices(get_settings())
        return _services


def reset() -> None:
    """After a fork: nothing built by the parent (sockets, pools) may be shared."""
    global _services
    with _guard:
        _services = None
    dispose_engines()
