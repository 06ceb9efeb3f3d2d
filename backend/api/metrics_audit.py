"""The counters Prometheus wants as `_total`, counted from the audit log, and the log's health.

The log is append-only with gapless ids: each scrape reads only the events after the last
one it saw, so a scrape costs the new events, not the history (after a restart the first
scrape counts the history once). Labels are bounded: AWS error codes and exception names
for failures, the safety rules' names for blocked verdicts.

The same pass checks the hash chain of the new events (at the first scrape, only the last
`CHAIN_WINDOW`: `finops audit verify` checks the whole history). A break is kept until the
database changes, so the alert on it does not clear by itself.

Audit writes that fail leave nothing in the log to count: `CountingAuditLogger`
(backend/core/audit_failures.py) counts them as they fail in this process (metrics.py hands
it to the API's services); the workers' count is read from Redis by the collector.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.core.audit_chain import AuditEvent, verify_events
from backend.core.automation_audit_logger import to_event
from backend.core.models import AuditEventRow
from backend.domain.safety import Rule

_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_RULES = tuple(r.value for r in Rule)
RULE_LABELS = (*_RULES, "other")  # every value the rule label takes: each series from 0 on
_COUNTED_EVENTS = ("safety_verdict", "execution", "rollback")
CHAIN_WINDOW = 10_000  # events whose chain the first scrape checks


def reason_of(error: str | None) -> str:
    """A bounded label for an error text: its AWS error code or exception name."""
    if not error:
        return "unknown"
    if error.startswith("interrupted by the emergency stop"):
        return "emergency-stop"
    head = error.split(":", 1)[0].strip()
    return head if _CODE.fullmatch(head) else "other"


def rules_of(details: dict[str, Any]) -> list[str]:
    """The rules a blocked verdict names: `rule` (a batch), or its 'rule: reason; ...' summary."""
    if isinstance(details.get("rule"), str):
        return [details["rule"]]
    summary = str(details.get("summary", ""))
    found = [r for r in _RULES if summary.startswith(f"{r}: ") or f"; {r}: " in summary]
    return found or ["other"]


class AuditCounts:
    """Counters kept across scrapes, advanced by the audit events written since the last."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.last_id = 0
        self.failures: Counter[str] = Counter()
        self.safety: Counter[str] = Counter()
        # The verdicts that stopped an approved action (stage "execute") or a whole batch (no
        # stage): something about to change AWS was judged unsafe. Planning blocks are the
        # routine part: the same protected resource is judged again at every plan.
        self.safety_at_execution: Counter[str] = Counter()
        self.results: Counter[str] = Counter()
        self.rollback_failures = 0
        self.chain_head: AuditEvent | None = None  # the newest event whose chain was checked
        self.chain_break: str | None = None

    @property
    def chain_valid(self) -> bool:
        return self.chain_break is None

    def advance(self, session: Session) -> None:
        with self.lock:
            head = session.scalar(select(func.max(AuditEventRow.id))) or 0
            if head < self.last_id:  # a new database: start over
                self._reset()
            query = (
                select(
                    AuditEventRow.id,
                    AuditEventRow.event_type,
                    AuditEventRow.outcome,
                    AuditEventRow.details,
                )
                .where(AuditEventRow.id > self.last_id, AuditEventRow.id <= head)
                .where(AuditEventRow.event_type.in_(_COUNTED_EVENTS))
                .order_by(AuditEventRow.id)
                .execution_options(yield_per=1000)
            )
            for _id, kind, outcome, details in session.execute(query):
                self._count(kind, outcome, details or {})
            self._check_chain(session, head)
            self.last_id = head

    def _count(self, kind: str, outcome: str, details: dict[str, Any]) -> None:
        if kind == "safety_verdict" and outcome == "blocked" and "from" not in details:
            # The verdict itself; the state change that follows it carries "from" (not counted).
            rules = rules_of(details)
            self.safety.update(rules)
            if details.get("stage") in (None, "execute"):
                self.safety_at_execution.update(rules)
        elif kind == "execution" and outcome in ("succeeded", "failed"):
            self.results[outcome] += 1
            if outcome == "failed":
                self.failures[reason_of(details.get("error"))] += 1
        elif kind == "rollback" and outcome in ("impossible", "failed"):
            self.failures[f"rollback-{outcome}"] += 1
            self.rollback_failures += 1

    def _check_chain(self, session: Session, head: int) -> None:
        if self.chain_break is not None or head == 0:
            return  # a break stays reported until the database changes
        start = self.chain_head.id if self.chain_head else max(0, head - CHAIN_WINDOW)
        if start >= head:
            return
        rows = session.scalars(
            select(AuditEventRow)
            .where(AuditEventRow.id > start, AuditEventRow.id <= head)
            .order_by(AuditEventRow.id)
            .execution_options(yield_per=1000)
        )
        seen: list[AuditEvent] = []

        def new() -> Iterator[AuditEvent]:
            for row in rows:
                event = to_event(row)
                seen[:] = [event]  # only the newest is kept: the next scrape links to it
                yield event

        known = [self.chain_head] if self.chain_head else []
        report = verify_events(itertools.chain(known, new()), from_start=start == 0)
        if not report.ok:
            self.chain_break = str(report)
        elif seen:
            self.chain_head = seen[0]
