#!/usr/bin/env python
"""After an emergency stop: what did the automation touch, and does anything look wrong?

    python scripts/emergency-resource-check.py [--hours 4]

Lists the actions executed in the window (succeeded, failed, rolled back) and every action
still executing, describes each resource in AWS as it is now (read-only), flags what looks
wrong and prints the rollback command of each. A rolled-back action shows what its rollback
did (from its audit event) and the resource as it is now: a deleted one restored under a
NEW id is described under that id. Exit status 1 when anything is flagged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
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
# How an undo names what it made in place of a deleted resource: "restored X ... as NEW (...".
NEW_ID = re.compile(r"\bas (\S+?)[,;:)]?(?:\s|$)")


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


def describe_now(
    row: ActionRow, ctx: ExecutionContext, resource_id: str
) -> tuple[dict[str, Any] | None, str | None]:
    """The resource as AWS describes it now: (resource, None), (None, None) when it is gone,
    or (None, why) when it could not be read."""
    from backend.domain.resources import ResourceKind
    from backend.providers.aws.operations import ResourceGone, operation_for
    from backend.providers.aws.retry import describe_error

    try:
        op = operation_for(row.action, ResourceKind(row.kind))
        return _as_dict(op.describe(ctx.op_context(row, _refuse), resource_id)), None
    except ResourceGone:
        return None, None
    except Exception as exc:  # noqa: BLE001 - an unknown state is itself a finding
        return None, describe_error(exc)


def examine_rolled_back(
    row: ActionRow, ctx: ExecutionContext, found: Finding, undo: dict[str, Any] | None
) -> Finding:
    """What the rollback did, and the resource now: the original, or what replaced it."""
    before = watched(row.pre_state) if row.pre_state else None
    if undo is None:
        found.flags.append("rolled back, but its rollback audit event was not found")
        done = ""
    else:
        done = str(undo.get("done") or "")
        found.lines.append(f"rolled back by {undo['actor']} at {undo['at']}: {done}")
    current, error = describe_now(row, ctx, row.resource_id)
    where = row.resource_id
    new_id = NEW_ID.search(done)
    if current is None and error is None and new_id and new_id[1] != row.resource_id:
        where = new_id[1]  # the original is gone; the undo made this one in its place
        current, error = describe_now(row, ctx, where)
    if error is not None:
        found.flags.append(f"could not check {where} in AWS: {error}")
        now = "unknown"
    else:
        now_view = watched(current)
        now = short(now_view)
        if where != row.resource_id:
            now = f"{row.resource_id} gone, in its place {where}: {now}"
        # Tags aside (a restored copy carries finops:restored-from): state and type.
        changed = differences(_untagged(before), _untagged(now_view)) if before else []
        if changed:
            found.flags.append(f"not back in its pre-state ({', '.join(changed)}): now {now}")
    found.lines.append(
        "before: " + (short(before) if before else "not recorded") + f"   now: {now}"
    )
    found.rollback = "already rolled back"
    return found


def _untagged(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k != "tags"}


def examine(
    row: ActionRow, ctx: ExecutionContext, now: dt.datetime, undo: dict[str, Any] | None = None
) -> Finding:

    when = row.finished_at or row.claimed_at or row.updated_at
    found = Finding(
        row.id,
        f"#{row.id} {row.state} {row.action} {row.kind} {row.account_id}/{row.region}/"
        f"{row.resource_id} ({row.policy_name}) at {when:%Y-%m-%d %H:%M} UTC",
    )
    if row.state == "rolled_back":
        return examine_rolled_back(row, ctx, found, undo)
    before = watched(row.pre_state) if row.pre_state else None
    after = watched(row.post_state) if row.post_state else None
    current, error = describe_now(row, ctx, row.resource_id)
    if error is not None:
        found.flags.append(f"could not check it in AWS: {error}")
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
        # Past its deadline, the process may be gone: the reconcile settles it from AWS.
        found.rollback += (
            "  (once it has finished or failed; past its deadline, "
            "`finops actions reconcile` settles it)"
        )
    elif not row.pre_state:
        found.rollback += "  (nothing to undo: it failed before recording a pre-state)"
    return found


def rollbacks(session: Any, ids: list[int]) -> dict[int, dict[str, Any]]:
    """The last successful rollback event of each action: what it did, who, when."""
    from sqlalchemy import select

    from backend.core.models import AuditEventRow

    if not ids:
        return {}
    query = (
        select(AuditEventRow)
        .where(
            AuditEventRow.event_type == "rollback",
            AuditEventRow.subject_type == "action",
            AuditEventRow.subject_id.in_([str(i) for i in ids]),
            AuditEventRow.outcome == "rolled_back",
        )
        .order_by(AuditEventRow.id)
    )
    return {
        int(event.subject_id): {
            "done": (event.details or {}).get("done"),
            "actor": event.actor,
            "at": f"{event.occurred_at:%Y-%m-%d %H:%M} UTC",
        }
        for event in session.scalars(query)
    }


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
                        (ActionRow.state.in_(["succeeded", "failed", "rolled_back"]))
                        & (ActionRow.claimed_at >= since),
                        # rolled back in the window, whenever it ran
                        (ActionRow.state == "rolled_back") & (ActionRow.updated_at >= since),
                    )
                )
                .order_by(ActionRow.claimed_at, ActionRow.id)
            )
        )
        undone = rollbacks(session, [r.id for r in rows if r.state == "rolled_back"])
        session.expunge_all()
    window = f"the last {args.hours:g}h"
    if not rows:
        print(f"no actions executed in {window} and none executing: nothing to check")
        return 0
    ctx = ExecutionContext(
        settings, AwsClients(endpoint_url=settings.aws_endpoint_url), EmergencyStop(), None
    )
    print(f"{len(rows)} action(s) executed in {window} or still executing:")
    findings = [examine(row, ctx, now, undone.get(row.id)) for row in rows]
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
