"""Stuck actions: executing past their deadline while their worker is gone.

Never re-run blindly; decide from the record, then from the account itself:
- no pre-state recorded: the worker died before anything was asked of AWS (the pre-state is
  committed before the backup and the change), so the action goes back to approved and runs
  again through every check;
- a pre-state: the change may or may not have reached AWS. The operation's own verification
  reads the account: if the intended state is there, the action succeeded (reconciled);
  otherwise it failed, saying what the account shows, with its pre-state and backup kept
  (`finops actions retry` re-judges it; `rollback` undoes whatever was done). If the account
  could not be read (throttled, access denied, expired credentials, circuit breaker open,
  no connection), nothing is known about the change: the action is left as it is and the
  next tick tries again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import structlog
from sqlalchemy import select

from backend.core.action_transition import transition
from backend.core.database import session_scope
from backend.core.execution_context import ExecutionContext, refuse_changes, resource_dict
from backend.core.models import ActionRow, WorkerHeartbeatRow
from backend.core.types import utcnow
from backend.domain.lifecycle import ActionState
from backend.domain.resources import ResourceKind
from backend.providers.aws.breakers import CircuitOpenError, classify
from backend.providers.aws.describe import UnknownTagsError
from backend.providers.aws.operations import operation_for
from backend.providers.aws.operations_base import ResourceGone, VerificationFailed
from backend.providers.aws.retry import describe_error
from backend.runtime.services import WorkerServices

log = structlog.get_logger(__name__)
S = ActionState
RECONCILER = "reconciler"
VERIFY_WAIT_SECONDS = 60.0  # a reconciliation reads; it does not wait out a long change


def stuck_actions(svc: WorkerServices, now: dt.datetime) -> list[int]:
    """Executing past the deadline, and its worker is gone or no longer holds it (a live
    worker whose database went away mid-action gives up on the action; its heartbeat says
    which actions it is executing)."""
    stale = now - dt.timedelta(seconds=svc.settings.heartbeat_stale_seconds)
    with session_scope() as session:
        holding = {
            beat.worker: set(beat.details.get("executing", []))
            for beat in session.scalars(select(WorkerHeartbeatRow))
            if beat.last_seen >= stale
        }
        rows = session.scalars(
            select(ActionRow).where(ActionRow.state == S.EXECUTING, ActionRow.deadline < now)
        )
        return [r.id for r in rows if r.id not in holding.get(r.claimed_by or "", set())]


def reconcile(svc: WorkerServices, action_id: int) -> str:
    """Settle one stuck action; returns the state it was left in."""
    with session_scope() as session:
        row = session.get(ActionRow, action_id)
        if row is None or row.state != S.EXECUTING:
            return row.state if row else "gone"
        if not row.pre_state:
            transition(
                session,
                row,
                S.APPROVED,
                actor=RECONCILER,
                audit=svc.audit,
                event="execution",
                details={"reconciled": "worker lost before any AWS change", "changed": False},
            )
            return S.APPROVED.value
        ctx = ExecutionContext(svc.settings, svc.clients, svc.emergency, svc.pack())
        op_ctx = dataclasses.replace(
            ctx.op_context(row, refuse_changes), wait_timeout=VERIFY_WAIT_SECONDS
        )
        op = operation_for(row.action, ResourceKind(row.kind))
        resource_id, params, worker = row.resource_id, dict(row.params or {}), row.claimed_by
    try:
        post = op.verify(op_ctx, resource_id, params)
        found: str | None = None
    except (VerificationFailed, ResourceGone) as exc:  # read: not in the intended state
        post, found = None, f"the account does not show the change ({describe_error(exc)})"
    except Exception as exc:  # noqa: BLE001 - anything else settles nothing about AWS
        if unreadable(exc):
            log.warning(
                "reconcile: account unreadable, action left for the next tick",
                action=action_id,
                error=describe_error(exc),
            )
            return S.EXECUTING.value
        post, found = None, f"its change could not be verified ({describe_error(exc)})"
    with session_scope() as session:
        row = session.get(ActionRow, action_id)
        if row is None or row.state != S.EXECUTING:
            return row.state if row else "gone"
        if found is None:
            row.post_state = resource_dict(post) if post is not None else {"gone": True}
            row.finished_at = utcnow()
            target = S.SUCCEEDED
            details: dict[str, object] = {"reconciled": f"worker {worker} lost; change found"}
        else:
            row.error = (
                f"worker {worker} lost mid-action; {found}; pre-state and backup kept: "
                f"retry re-judges it, rollback undoes it"
            )
            target, details = S.FAILED, {"reconciled": row.error, "changed": None}
        transition(
            session, row, target, actor=RECONCILER, audit=svc.audit, event="execution",
            details=details,
        )  # fmt: skip
        return target.value


def unreadable(exc: BaseException) -> bool:
    """AWS did not answer the read (throttling, 5xx, access refused or expired, breaker
    open, no connection, tags missing from the answer): it says nothing about the change."""
    return isinstance(exc, CircuitOpenError | UnknownTagsError) or classify(exc) is True
