"""A Prometheus collector that reads the database at scrape time.

Gauges are current counts; the `_total` counters come from the audit log (metrics_audit).
The collector never raises: a part that fails is skipped and counted in
`finops_metrics_scrape_errors{part}`, and a dead database reports engine status 0.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import case, func, select, text
from sqlalchemy.orm import Session

from backend.api.context import ApiContext
from backend.api.metrics_audit import RULE_LABELS, AuditCounts, reason_of
from backend.core.audit_failures import RedisFailureCount
from backend.core.models import (
    ActionRow,
    EngineStateRow,
    NotificationRow,
    OpportunityRow,
    ScanRunRow,
    WorkerHeartbeatRow,
)
from backend.core.stop_fast_path import RedisStopSignal
from backend.core.types import utcnow
from backend.domain.lifecycle import ActionState

log = structlog.get_logger(__name__)
NOTIFICATION_WINDOW = dt.timedelta(hours=24)


class FinOpsCollector:
    def __init__(
        self, context: ApiContext, *, breakers: Callable[[], list[Any]] | None = None
    ) -> None:
        self._context = context
        self._counts = AuditCounts()
        self._breakers = breakers
        self._registry: Any = None  # the breakers' shared view, made on first scrape
        self._worker_failures: RedisFailureCount | None = None
        self._stop_signal: RedisStopSignal | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # nothing is read when the collector is registered

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        errors: Counter[str] = Counter()
        out: list[Metric] = []
        try:
            running = self._collect_database(out, errors)
        except Exception as exc:  # noqa: BLE001 - the last guard: a scrape never fails
            running = self._down(exc, errors)
        out.extend(self._collect_breakers(errors))
        out.extend(self._collect_worker_audit_failures(errors))
        yield _gauge(
            "finops_automation_engine_status",
            "1 when the engine can run actions, 0 when down or emergency-stopped",
            value=1.0 if running else 0.0,
        )
        yield from out
        scrape = GaugeMetricFamily(
            "finops_metrics_scrape_errors", "Parts of this scrape that failed", labels=["part"]
        )
        for part in (
            "database",
            "emergency_stop",
            "actions",
            "audit",
            "scan",
            "savings",
            "notifications",
            "workers",
            "breakers",
            "worker_audit",
        ):
            scrape.add_metric([part], float(errors[part]))
        yield scrape
        yield _gauge(
            "finops_metrics_scrape_duration_seconds",
            "Time this scrape took",
            value=time.perf_counter() - started,
        )

    # -- from the database --------------------------------------------------------------

    def _collect_database(self, out: list[Metric], errors: Counter[str]) -> bool:
        """Append what the database says; True when the engine could run actions now."""
        try:
            session = self._context.session_factory()
        except Exception as exc:  # noqa: BLE001 - an unusable URL is a reading too
            return self._down(exc, errors)
        with session:
            try:
                session.execute(text("SELECT 1"))
            except Exception as exc:  # noqa: BLE001 - a dead database is a reading, not a crash
                return self._down(exc, errors)
            parts: dict[str, Callable[[Session], list[Metric]]] = {
                "actions": self._actions,
                "audit": self._audit,
                "scan": self._scan,
                "savings": self._savings,
                "notifications": self._notifications,
            }
            for part, read in parts.items():
                out.extend(self._part(part, read, session, errors))
            stopped = self._part("emergency_stop", self._stop, session, errors)
            workers = self._part("workers", self._workers, session, errors)
        out.extend(stopped + workers)
        # Unreadable counts as stopped: the engine itself fails closed on it.
        stop_off = bool(stopped) and stopped[0].samples[0].value == 0.0
        workers_ok = not self._context.settings.redis_url or any(
            s.value > 0 for m in workers if m.name == "finops_workers_alive" for s in m.samples
        )
        return stop_off and workers_ok

    @staticmethod
    def _down(exc: Exception, errors: Counter[str]) -> bool:
        log.warning("metrics: database unavailable", error=(str(exc).splitlines() or ["?"])[0])
        errors["database"] += 1
        return False

    @staticmethod
    def _part(
        name: str, read: Callable[[Session], list[Metric]], session: Session, errors: Counter[str]
    ) -> list[Metric]:
        try:
            return read(session)
        except Exception as exc:  # noqa: BLE001 - one broken part must not hide the others
            log.warning("metrics: part failed", part=name, error=str(exc).splitlines()[0])
            errors[name] += 1
            with contextlib.suppress(Exception):  # the next part starts from a clean session
                session.rollback()
            return []

    def _stop(self, session: Session) -> list[Metric]:
        engaged = session.scalar(
            select(EngineStateRow.emergency_stop).where(EngineStateRow.id == 1)
        )
        # A stop key left in Redis refuses every claim as the row does: it counts as engaged.
        engaged = engaged or self._stop_key_left()
        return [
            _gauge(
                "finops_emergency_stop_engaged",
                "1 while the emergency stop is engaged",
                value=1.0 if engaged else 0.0,
            )
        ]

    @staticmethod
    def _actions(session: Session) -> list[Metric]:
        by_state = GaugeMetricFamily(
            "finops_actions", "Actions by state and policy", labels=["state", "policy"]
        )
        query = select(ActionRow.state, ActionRow.policy_name, func.count()).group_by(
            ActionRow.state, ActionRow.policy_name
        )
        for state, policy, n in session.execute(query):
            by_state.add_metric([state, policy], float(n))
        now = utcnow()
        due, oldest = session.execute(
            select(func.count(), func.min(ActionRow.approved_at)).where(
                ActionRow.state == ActionState.APPROVED,
                ActionRow.not_before.is_(None) | (ActionRow.not_before <= now),
                ActionRow.approval_expires_at.is_(None) | (ActionRow.approval_expires_at > now),
            )
        ).one()
        age = (now - oldest).total_seconds() if due and oldest else 0.0
        return [
            by_state,
            _gauge(
                "finops_action_queue_backlog",
                "Approved actions due now, waiting to run",
                value=float(due),
            ),
            _gauge(
                "finops_action_queue_oldest_age_seconds",
                "Age of the oldest approval among the due actions",
                value=age,
            ),
        ]

    def _audit(self, session: Session) -> list[Metric]:
        self._counts.advance(session)
        c = self._counts
        failures = CounterMetricFamily(
            "finops_action_failures",
            "Failed executions and failed or impossible rollbacks, by reason",
            labels=["reason"],
        )
        for reason, n in sorted(c.failures.items()):
            failures.add_metric([reason], float(n))
        safety = CounterMetricFamily(
            "finops_safety_check_failures", "Safety verdicts that blocked, by rule", labels=["rule"]
        )
        # Every rule from 0, so that the first block of a rule is an increase too.
        for rule in RULE_LABELS:
            safety.add_metric([rule], float(c.safety[rule]))
        at_execution = CounterMetricFamily(
            "finops_safety_check_execution_failures",
            "Safety verdicts that blocked an approved action or a batch at execution time, by "
            "rule (the part of finops_safety_check_failures that is not planning)",
            labels=["rule"],
        )
        for rule in RULE_LABELS:
            at_execution.add_metric([rule], float(c.safety_at_execution[rule]))
        results = CounterMetricFamily(
            "finops_action_executions", "Finished executions, by result", labels=["result"]
        )
        for result in ("succeeded", "failed"):
            results.add_metric([result], float(c.results[result]))
        rollbacks = CounterMetricFamily(
            "finops_rollback_failures",
            "Rollbacks that could not undo their action (audited as impossible or failed)",
            value=float(c.rollback_failures),
        )
        chain = _gauge(
            "finops_audit_chain_valid",
            "1 while the audit log's hash chain checks out over the events read, 0 once broken",
            value=1.0 if c.chain_valid else 0.0,
        )
        return [failures, safety, at_execution, results, rollbacks, chain]

    @staticmethod
    def _scan(session: Session) -> list[Metric]:
        newest = session.scalars(select(ScanRunRow).order_by(ScanRunRow.id.desc()).limit(1)).first()
        running = (
            (utcnow() - newest.started_at).total_seconds()
            if newest is not None and newest.finished_at is None
            else 0.0
        )
        in_progress = _gauge(
            "finops_scan_in_progress_seconds",
            "How long the newest scan has been running; 0 once it has finished",
            value=max(running, 0.0),
        )
        last = session.scalars(
            select(ScanRunRow)
            .where(ScanRunRow.finished_at.is_not(None))
            .order_by(ScanRunRow.id.desc())
            .limit(1)
        ).first()
        if last is None or last.finished_at is None:
            return [in_progress]
        errors = GaugeMetricFamily(
            "finops_last_scan_aws_errors",
            "Parts of the last scan that AWS refused, by error code",
            labels=["code"],
        )
        for code, n in sorted(Counter(reason_of(str(e)) for e in last.failures.values()).items()):
            errors.add_metric([code], float(n))
        return [
            _gauge(
                "finops_last_scan_duration_seconds",
                "Duration of the last finished scan",
                value=(last.finished_at - last.started_at).total_seconds(),
            ),
            _gauge(
                "finops_last_scan_resources",
                "Resources the last finished scan saw",
                value=float((last.counts or {}).get("resources", 0)),
            ),
            _gauge(
                "finops_last_scan_timestamp_seconds",
                "When the last scan finished",
                value=last.finished_at.timestamp(),
            ),
            in_progress,
            errors,
        ]

    @staticmethod
    def _savings(session: Session) -> list[Metric]:
        estimated = session.scalar(
            select(func.coalesce(func.sum(OpportunityRow.estimated_monthly_savings), 0.0)).where(
                OpportunityRow.status == "open"
            )
        )
        measured, unmeasured = session.execute(
            select(
                func.coalesce(func.sum(ActionRow.realized_monthly_savings), 0.0),
                func.coalesce(
                    func.sum(
                        case(
                            (
                                ActionRow.realized_monthly_savings.is_(None),
                                ActionRow.estimated_monthly_savings,
                            )
                        )
                    ),
                    0.0,
                ),
            ).where(ActionRow.state == ActionState.SUCCEEDED)
        ).one()
        realized = GaugeMetricFamily(
            "finops_realized_monthly_savings_usd",
            "Monthly savings of succeeded actions: measured, or their estimate when unmeasured",
            labels=["basis"],
        )
        realized.add_metric(["measured"], float(measured or 0.0))
        realized.add_metric(["estimate"], float(unmeasured or 0.0))
        return [
            _gauge(
                "finops_estimated_monthly_savings_usd",
                "Estimated monthly savings of the open opportunities",
                value=float(estimated or 0.0),
            ),
            realized,
        ]

    @staticmethod
    def _notifications(session: Session) -> list[Metric]:
        """Messages whose last delivery failed, created in the last NOTIFICATION_WINDOW (the
        window `NotificationService.failed_notifications()` lists): a retry that succeeds
        takes one off, and so does age."""
        since = utcnow() - NOTIFICATION_WINDOW
        failed = GaugeMetricFamily(
            "finops_notifications_failed",
            "Notifications of the last 24 hours whose last delivery attempt failed, by channel",
            labels=["channel"],
        )
        query = (
            select(NotificationRow.channel, func.count())
            .where(NotificationRow.status == "failed", NotificationRow.created_at >= since)
            .group_by(NotificationRow.channel)
        )
        for channel, n in sorted(session.execute(query).all()):
            failed.add_metric([channel], float(n))
        return [failed]

    def _workers(self, session: Session) -> list[Metric]:
        now = utcnow()
        stale = dt.timedelta(seconds=self._context.settings.heartbeat_stale_seconds)
        beats = GaugeMetricFamily(
            "finops_worker_last_heartbeat_timestamp_seconds",
            "Each worker's last heartbeat",
            labels=["worker"],
        )
        alive = 0
        for row in session.scalars(select(WorkerHeartbeatRow)):
            beats.add_metric([row.worker], row.last_seen.timestamp())
            if now - row.last_seen <= stale:
                alive += 1
        return [
            beats,
            _gauge("finops_workers_alive", "Workers with a recent heartbeat", value=float(alive)),
        ]

    # -- from the circuit breakers, when they exist ------------------------------------

    def _collect_breakers(self, errors: Counter[str]) -> list[Metric]:
        try:
            states = self._breakers() if self._breakers else self._breaker_states()
        except Exception as exc:  # noqa: BLE001
            log.warning("metrics: circuit breakers unreadable", error=str(exc))
            errors["breakers"] += 1
            return []
        if states is None:
            return []  # no breakers in this build: nothing to report, nothing wrong
        is_open = GaugeMetricFamily(
            "finops_circuit_breaker_open",
            "1 while an AWS circuit breaker is open or half-open",
            labels=["breaker", "state"],
        )
        failures = GaugeMetricFamily(
            "finops_aws_api_window_failures",
            "AWS call failures in the breaker's current window",
            labels=["breaker"],
        )
        for s in states:
            label = getattr(getattr(s, "key", None), "label", str(getattr(s, "key", s)))
            state = str(getattr(s, "state", "open"))
            is_open.add_metric([label, state], 0.0 if state == "closed" else 1.0)
            if getattr(s, "failures", None) is not None:
                failures.add_metric([label], float(s.failures))
        return [is_open, failures]

    def _stop_key_left(self) -> bool:
        url = self._context.settings.redis_url
        if not url:
            return False
        if self._stop_signal is None:
            self._stop_signal = RedisStopSignal(url)
        try:
            return self._stop_signal.is_engaged()
        except Exception as exc:  # noqa: BLE001 - Redis down: the row decides, as in check()
            log.warning("metrics: emergency stop key unreadable", error=str(exc))
            return False

    # -- from Redis: what the workers could not write to the audit log -------------------

    def _collect_worker_audit_failures(self, errors: Counter[str]) -> list[Metric]:
        url = self._context.settings.redis_url
        if not url:
            return []  # embedded mode: no workers apart from this process
        if self._worker_failures is None:
            self._worker_failures = RedisFailureCount(url)
        try:
            count = self._worker_failures.read()
        except Exception as exc:  # noqa: BLE001 - Redis down is a reading, not a crash
            log.warning("metrics: worker audit failures unreadable", error=str(exc))
            errors["worker_audit"] += 1
            return []
        return [
            CounterMetricFamily(
                "finops_worker_audit_write_failures",
                "Audit events the workers could not write (counted in Redis)",
                value=float(count),
            )
        ]

    def _breaker_states(self) -> list[Any] | None:
        """Every breaker the workers share through Redis; None when there is nothing to read."""
        try:
            from backend.providers.aws import breakers
        except ImportError:
            return None
        if hasattr(breakers, "open_breakers"):
            return list(breakers.open_breakers())
        registry = getattr(breakers, "BreakerRegistry", None)
        url = self._context.settings.redis_url
        if registry is None or not url:
            return None  # embedded mode: breakers live in each worker's memory, not here
        if self._registry is None:
            self._registry = registry(url)
        return list(self._registry.states())


def _gauge(name: str, documentation: str, *, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
