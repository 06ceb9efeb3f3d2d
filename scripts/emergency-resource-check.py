#!/usr/bin/env python
"""After an emergency stop: what did the automation touch, and does anything look wrong?

    python scripts/emergency-resource-check.py [--hours 4]

Lists the actions executed in the window (succeeded, failed) and every action still
executing, describes each resource in AWS as it is now (read-only), flags what looks wrong
and prints the rollback command of each. Exit status 1 when anything is flagged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Run from a checkout without installing: the repository root holds the `backend` package.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from backend.core.execution_context import ExecutionContext
    from backend.core.models import ActionRow

# What an action may change, so what "before", "after" and "now" are compared on.
WATCHED_ATTRIBUTES = ("InstanceType", "VolumeType", "Iops", "Throughput", "DBInstanceClass")


@dataclass
class Finding:
    row_id: int
    headline: str
    lines: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    rollback: str = ""


def watched(resource: dict[str, Any] | None) -> dict[str, Any]:
    """The fields an action changes: state, tags, type. {"gone": True} for a deleted one."""
    if resource is None or resource.get("gone"):
        return {"gone": True}
    attributes = resource.get("attributes") or {}
    picked = {k: attributes[k] for k in WATCHED_ATTRIBUTES if k in attributes}
    return {"state": resource.get("state"), "tags": resource.get("tags") or {}, **picked}


def short(view: dict[str, Any]) -> str:
    if view.get("gone"):
        return "gone"
    extra = [f"{k}={view[k]}" for k in WATCHED_ATTRIBUTES if k in view]
    return " ".join([str(view.get("state")), *extra])


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def examine(row: ActionRow, ctx: ExecutionContext, now: dt.datetime) -> Finding:
    from backend.domain.resources import ResourceKind
    from backend.providers.aws.operations import ResourceGone, operation_for
    from backend.providers.aws.retry import describe_error

    when = row.finished_at or row.claimed_at or row.updated_at
    found = Finding(
        row.id,
        f"#{row.id} {row.state} {row.action} {row.kind} {row.account_id}/{row.region}/"
        f"{row.resource_id} ({row.policy_name}) at {when:%Y-%m-%d %H:%M} UTC",
    )
    before = watched(row.pre_state) if row.pre_state else None
    after = watched(row.post_state) if row.post_state else None
    try:
        op = operation_for(row.action, ResourceKind(row.kind))
        current: dict[str, Any] | None = _as_dict(
            op.describe(ctx.op_context(row, _refuse), row.resource_id)
        )
    except ResourceGone:
        current = None
    except Exception as exc:  # noqa: BLE001 - an unknown state is itself a finding
        found.flags.append(f"could not check it in AWS: {describe_error(exc)}")
        current = {"unknown": True}
    now_view = watched(current) if current is None or "unknown" not in current else None
    found.lines.append(
        "before: " + (short(before) if before else "not recorded")
        + "   after: " + (short(after) if after else "-")
        + "   now: " + (short(now_view) if now_view else "unknown")
    )  # fmt: skip
    if row.state == "executing":
        found.flags.append(f"still executing (claimed by {row.claimed_by})")
        if row.deadline and row.deadline < now:
            found.flags.append(
                f"past its deadline {row.deadline:%H:%M} UTC: its worker may have died"
            )
    elif now_view is not None and row.state == "succeeded" and before and after:
        changed = differences(before, after)
        if changed and not differences(before, now_view):
            found.flags.append(f"back in its pre-state ({short(before)}): undone outside FinOps?")
        elif changed and differences(after, now_view):
            what = ", ".join(differences(after, now_view))
            found.flags.append(f"changed since the action ({what}): now {short(now_view)}")
    elif now_view is not None and row.state == "failed":
        found.lines.append(f"error: {row.error}")
        if before and differences(before, now_view):
            what = ", ".join(differences(before, now_view))
            found.flags.append(f"failed, but the resource changed ({what}): a partial change?")
    if row.backup_ref:
        found.lines.append(f"backup: {row.backup_ref[:80]}")
    found.rollback = f"finops actions rollback {row.id}"
    if row.state == "executing":
        found.rollback += "  (once it has finished or failed)"
    elif not row.pre_state:
        found.rollback += "  (nothing to undo: it failed before recording a pre-state)"
    return found


def _as_dict(resource: Any) -> dict[str, Any]:
    from backend.core.execution_context import resource_dict

    return resource_dict(resource)


def _refuse(call: str) -> None:
    raise RuntimeError(f"read-only check: refusing the changing call {call}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hours", type=float, default=4.0, help="the window (default 4)")
    args = parser.parse_args(argv)
    if args.hours <= 0:
        parser.error("--hours must be positive")

    from sqlalchemy import or_, select

    from backend.config import SettingsError, get_settings
    from backend.core.database import DatabaseUnavailableError, check_database, session_scope
    from backend.core.emergency_stop import EmergencyStop
    from backend.core.execution_context import ExecutionContext
    from backend.core.migrations import SchemaOutOfDateError, ensure_schema
    from backend.core.models import ActionRow
    from backend.core.types import utcnow
    from backend.providers.aws.session import AwsClients

    try:
        settings = get_settings()
        check_database()
        ensure_schema()  # embedded SQLite migrates itself; a server database is only checked
    except (SettingsError, DatabaseUnavailableError, SchemaOutOfDateError) as exc:
        print(f"cannot check: {exc}", file=sys.stderr)
        return 2
    now = utcnow()
    since = now - dt.timedelta(hours=args.hours)
    with session_scope() as session:
        rows = list(
            session.scalars(
                select(ActionRow)
                .where(
                    or_(
                        ActionRow.state == "executing",
                        (ActionRow.state.in_(["succeeded", "failed"]))
                        & (ActionRow.claimed_at >= since),
                    )
                )
                .order_by(ActionRow.claimed_at, ActionRow.id)
            )
        )
        session.expunge_all()
    window = f"the last {args.hours:g}h"
    if not rows:
        print(f"no actions executed in {window} and none executing: nothing to check")
        return 0
    ctx = ExecutionContext(
        settings, AwsClients(endpoint_url=settings.aws_endpoint_url), EmergencyStop(), None
    )
    print(f"{len(rows)} action(s) executed in {window} or still executing:")
    findings = [examine(row, ctx, now) for row in rows]
    for f in findings:
        print(f"{'FLAG' if f.flags else 'ok  '} {f.headline}")
        for line in f.lines:
            print(f"       {line}")
        for flag in f.flags:
            print(f"       FLAG: {flag}")
        print(f"       rollback: {f.rollback}")
    flagged = [f.row_id for f in findings if f.flags]
    if flagged:
        print(f"{len(flagged)} of {len(findings)} flagged: " + ", ".join(f"#{i}" for i in flagged))
        return 1
    print(f"nothing flagged in {len(findings)} action(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
