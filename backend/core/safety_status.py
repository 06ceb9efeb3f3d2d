"""What `SafetyChecker().system_status()` reports: active or not, and why."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop
from backend.core.models import EngineStateRow
from backend.core.types import utcnow
from backend.providers.aws.retry import describe_error

if TYPE_CHECKING:
    from backend.core.safety_checker import SafetyChecker, SafetyStatus


def build_status(checker: SafetyChecker) -> SafetyStatus:
    from backend.core.safety_checker import SafetyStatus

    problems: list[str] = []
    rules: dict[str, str] = {}
    try:
        c = checker.config
        rules = {
            "protected tag": f"{c.protected_tag_key} in {sorted(c.protected_tag_values)}",
            "opt-out tag": c.opt_out_tag,
            "protected accounts": ", ".join(sorted(c.protected_accounts)) or "none",
            "protected regions": ", ".join(sorted(c.protected_regions)) or "none",
            "change freezes": ", ".join(f"{s:%Y-%m-%d}..{e:%Y-%m-%d}" for s, e in c.freeze_windows)
            or "none",
            "blast radius": f"{c.max_actions_per_run}/run, {c.max_actions_per_hour}/hour, "
            f"{c.max_percent_of_fleet_per_run:g}% of a fleet per run",
            "approval": "irreversible or high-risk actions need a person",
            "overrides": "an active resource- or account-scope override blocks its actions",
            "fail closed": "any error while judging blocks",
            "dry run": "on" if checker.settings.dry_run else "OFF (live)",
        }
    except Exception as exc:  # noqa: BLE001 - a broken configuration is the finding
        problems.append(f"configuration unusable: {describe_error(exc)}")
    stop: dict[str, Any] = {"engaged": None}
    recent: list[str] = []
    try:
        from backend.core.migrations import ensure_embedded_schema

        ensure_embedded_schema()
        with session_scope() as session:
            row = session.scalars(select(EngineStateRow).where(EngineStateRow.id == 1)).first()
            stop = {
                "engaged": bool(row and row.emergency_stop),
                "reason": row.reason if row else None,
                "engaged_by": row.engaged_by if row else None,
                "engaged_at": row.engaged_at.isoformat() if row and row.engaged_at else None,
                "released": bool(row and row.released_at),
            }
            # check() refuses on a stop key left in Redis too: say so, not "off".
            stop["stop_key_left"] = not stop["engaged"] and EmergencyStop().stop_key_set()
            if rules:  # unreadable overrides block every action: a problem, like the stop
                rules["overrides"] += _exemptions_in_force(session)
        from backend.core.automation_audit_logger import AuditLogger

        seen: set[tuple[str, str, str]] = set()
        for event in AuditLogger().events("24h", event_types=frozenset({"safety_verdict"})):
            summary = str(event.details.get("summary") or "")
            key = (event.subject_type, event.subject_id, summary)
            # One block writes the verdict and the state change: list it once, with its why.
            if event.outcome == "blocked" and summary and key not in seen:
                seen.add(key)
                recent.append(f"{event.occurred_at:%Y-%m-%d %H:%M} {event.subject_id}: {summary}")
    except Exception as exc:  # noqa: BLE001 - the safety system cannot see its state
        problems.append(f"database unusable: {describe_error(exc)}")
    return SafetyStatus(
        active=not problems,
        emergency_stop=stop,
        rules=rules,
        recent_failures=recent,
        problems=problems,
    )


def _exemptions_in_force(session: Session) -> str:
    from backend.core.safety_checker import active_exemptions

    found = active_exemptions(session, utcnow())
    if not found:
        return " (none active)"
    shown = ", ".join(f"{e.scope} {e.target}" for e in found[:5])
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    return f" ({len(found)} active: {shown}{more})"
