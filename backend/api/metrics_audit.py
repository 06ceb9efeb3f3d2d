"""The counters Prometheus wants as `_total`, counted from the audit log.

The log is append-only with gapless ids: each scrape reads only the events after the last
one it saw, so a scrape costs the new events, not the history (after a restart the first
scrape counts the history once). Labels are bounded: AWS error codes and exception names
for failures, the safety rules' names for blocked verdicts.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.core.models import AuditEventRow
from backend.domain.safety import Rule

_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_RULES = tuple(r.value for r in Rule)
_COUNTED_EVENTS = ("safety_verdict", "execution", "rollback")


def reason_of(error: str | None) -> str:
    """A bounded label for an error text: its AWS error code or exception name."""
    if not error:
        return "unknown"
    if error.startswith("interrupted by the emergency stop"):
        return "emergency-stop"
    head = error.split(":", 1)[0].strip()
    return head if _CODE.match(head) else "other"


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
        self.results: Counter[str] = Counter()

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
            self.last_id = head

    def _count(self, kind: str, outcome: str, details: dict[str, Any]) -> None:
        if kind == "safety_verdict" and outcome == "blocked" and "from" not in details:
            # The verdict itself; the state change that follows it carries "from" (not counted).
            self.safety.update(rules_of(details))
        elif kind == "execution" and outcome in ("succeeded", "failed"):
            self.results[outcome] += 1
            if outcome == "failed":
                self.failures[reason_of(details.get("error"))] += 1
        elif kind == "rollback" and outcome == "impossible":
            self.failures["rollback-impossible"] += 1
