"""What AutoRemediationEngine's runbook methods return: each prints readably."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backend.core.emergency_stop import EngineState, ReleaseResult
from backend.domain.lifecycle import ActionState

if TYPE_CHECKING:
    from backend.core.action_engine import RunReport
    from backend.core.action_planner import PlanResult
    from backend.core.scan_service import ScanOutcome

S = ActionState
RESUME = "an administrator lifts it with `finops resume --actor NAME --i-am-admin`"
_CHECK_EXECUTING = (
    "stops before its next AWS call; check python scripts/emergency-resource-check.py"
)


@dataclass
class StopResult:
    state: EngineState
    held: list[dict[str, Any]]  # the actions executing or approved when the stop engaged
    already_engaged: bool = False
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [self.state.describe() + (" (already engaged)" if self.already_engaged else "")]
        lines.append(f"{len(self.held)} action(s) held by the stop" + (":" if self.held else ""))
        for a in self.held:
            then = _CHECK_EXECUTING if a["state"] == S.EXECUTING else "will not be claimed"
            lines.append(f"  #{a['id']} {a['state']} {a['action']} {a['resource']}: {then}")
        return "\n".join([*lines, *self.notes, RESUME])


@dataclass
class ResumeResult:
    state: ReleaseResult
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join([self.state.describe(), *self.notes])


@dataclass
class EngineStatus:
    mode: str
    database: str
    state: str = "running"  # running | stopped (emergency stop) | degraded (...)
    emergency_stop: str = "unknown"
    workers: list[str] = field(default_factory=lambda: ["unknown"])
    backlog: str = "unknown"
    last_hour: dict[str, int] | None = None  # actions by state; None: unknown
    last_day: dict[str, int] | None = None
    failure_rate: str = "unknown"
    circuit_breakers: str = "not configured (none open)"
    notifications: str = "unknown"
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def counts(by: dict[str, int] | None) -> str:
            if by is None:
                return "unknown"
            return ", ".join(f"{k} {v}" for k, v in sorted(by.items())) or "no actions"

        rows = {
            "automation engine": self.state.upper() if self.state == "running" else self.state,
            "emergency stop": self.emergency_stop,
            "mode": self.mode,
            "database": self.database,
            "workers": "; ".join(self.workers),
            "queue backlog": self.backlog,
            "actions, last 1h": counts(self.last_hour),
            "actions, last 24h": counts(self.last_day),
            "failure rate, 1h": self.failure_rate,
            "circuit breakers": self.circuit_breakers,
            "notifications": self.notifications,
        }
        lines = [f"{name + ':':19}{value}" for name, value in rows.items()]
        return "\n".join(lines + [f"PROBLEM: {p}" for p in self.problems])


@dataclass
class CheckReport:
    steps: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.steps) and all(ok for _, ok, _ in self.steps)

    def __str__(self) -> str:
        failed = sum(1 for _, ok, _ in self.steps if not ok)
        lines = [f"{'PASS' if ok else 'FAIL'} {name}: {detail}" for name, ok, detail in self.steps]
        verdict = "PASSED" if self.passed else "FAILED"
        lines.append(f"test_safe_action {verdict}: {len(self.steps) - failed} ok, {failed} failed")
        return "\n".join(lines)


@dataclass
class CycleSummary:
    dry_run: bool
    scan: ScanOutcome | None = None
    plan: PlanResult | None = None
    run: RunReport | None = None
    skipped: str | None = None

    def __str__(self) -> str:
        s, p, r = self.scan, self.plan, self.run
        if self.skipped or s is None or p is None or r is None:
            return f"cycle skipped: {self.skipped}"
        return "\n".join(
            [
                f"scan {s.scan_id}: {s.status}, {len(s.discovery.resources)} resources, "
                f"{len(s.opportunities)} opportunities",
                f"plan: {len(p.approved)} approved, {len(p.awaiting)} awaiting approval, "
                f"{len(p.blocked)} blocked, {p.existing} planned before",
                f"execute ({'DRY-RUN' if r.dry_run else 'LIVE'}, run {r.run_id}): "
                + (f"stopped: {r.stopped_by}" if r.stopped_by else f"{len(r.outcomes)} action(s)"),
                *(f"  #{o.action_id} {o.result}: {o.detail}" for o in r.outcomes),
            ]
        )
