"""What the routes share: the settings and the services built from them, made on first use.

One `ApiContext` per app (in `app.state`). Building it reads nothing and connects nowhere;
the session factory and each service are made when a request first needs them. Services
that accept a session factory get the app's; the ones that do not yet (ActionEngine,
AutoRemediationEngine, SafetyChecker's status) open sessions through `get_settings()`, so an
app must be given the process's settings (the default) for both to mean the same database.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

from sqlalchemy.orm import Session

from backend.api.break_glass import RecentOperators
from backend.api.change_feed import ChangeFeed
from backend.api.page_cache import PageCache
from backend.api.token_cache import TokenCache
from backend.config import Settings
from backend.core import database
from backend.core.action_engine import ActionEngine
from backend.core.action_planner import ActionPlanner
from backend.core.auto_remediation_engine import AutoRemediationEngine
from backend.core.automation_audit_logger import AuditLogger
from backend.core.emergency_stop import EmergencyStop
from backend.core.notification_service import NotificationService
from backend.core.policy_manager import PolicyManager
from backend.core.safety_checker import SafetyChecker


class ApiContext:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def database_url(self) -> str:
        return self.settings.effective_database_url

    @cached_property
    def change_feed(self) -> ChangeFeed | None:
        """Listening once the app starts (app.py's lifespan); None where caches are off:
        by the settings, or on SQLite, which has no notifications."""
        if not self.settings.api_read_cache or not self.database_url.startswith("postgresql"):
            return None
        return ChangeFeed(self.database_url, database.PG_CONNECT_ARGS)

    @cached_property
    def recent_operators(self) -> RecentOperators:
        return RecentOperators()

    @cached_property
    def tokens(self) -> TokenCache:
        return TokenCache(self.change_feed)

    @cached_property
    def pages(self) -> PageCache:
        megabytes = self.settings.api_read_cache_megabytes
        return PageCache(self.change_feed, megabytes * 2**20, self.settings.api_read_cache_seconds)

    @cached_property
    def session_factory(self) -> Callable[[], Session]:
        # get_engine() keeps one engine per URL, so two racing first requests share it.
        return database.session_factory(self.database_url)

    @cached_property
    def read_session_factory(self) -> Callable[[], Session]:
        """Sessions without a transaction, for GET and HEAD requests (deps.get_session)."""
        return database.session_factory(self.database_url, autocommit=True)

    def audit(self) -> AuditLogger:
        return AuditLogger(session_factory=self.session_factory)

    def emergency_stop(self) -> EmergencyStop:
        return EmergencyStop(session_factory=self.session_factory, audit=self.audit())

    def policies(self) -> PolicyManager:
        return PolicyManager(self.settings.policy_paths, session_factory=self.session_factory)

    def planner(self) -> ActionPlanner:
        return ActionPlanner(settings=self.settings, audit=self.audit())

    def safety(self) -> SafetyChecker:
        return SafetyChecker(settings=self.settings)

    def action_engine(self) -> ActionEngine:
        return ActionEngine(settings=self.settings, audit=self.audit())

    def remediation(self) -> AutoRemediationEngine:
        audit, notifier = self.audit(), NotificationService(sessions=self.session_factory)
        stop = EmergencyStop(session_factory=self.session_factory, audit=audit, notifier=notifier)
        return AutoRemediationEngine(
            settings=self.settings,
            audit=audit,
            notifier=notifier,
            emergency=stop,
            policies=self.policies(),
        )
