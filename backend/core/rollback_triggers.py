"""Automated rollback triggers (architecture step 7, Verify).

An action that succeeded within its window is undone when its resource turns out to be
needed after all:

* needed again: a stopped instance or database is running again because someone started
  it. They already did the undo, so the action is only recorded as rolled back; AWS is not
  called (starting it again could race them).
* owner objection: `object()` audits who objected and why, then rolls back through the
  ActionEngine (restore from the backup, start, restore the type, ...).
* CloudWatch alarm: a policy may name alarms; one in ALARM since the action ran rolls back
  that policy's recent actions.

Every trigger is audited with who or what fired it. A policy's window and alarms come from
its `rollback:` section (`window-days`, `alarms`); a mapping given to the constructor (the
CLI's --window/--alarm) overrides it; without either the window is FINOPS_ROLLBACK_WINDOW_DAYS
(read at call time), else 7 days.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import Settings, get_settings
from backend.core.action_engine import ActionEngine
from backend.core.action_transition import transition
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop, EmergencyStopEngaged
from backend.core.execution_context import ExecutionContext
from backend.core.models import ActionRow
from backend.core.types import utcnow
from backend.domain.lifecycle import ActionState
from backend.domain.policy.model import PolicyPack, Rollback
from backend.domain.resources import ResourceKind
from backend.providers.aws.operations import ResourceGone, operation_for
from backend.providers.aws.retry import describe_error
from backend.providers.aws.session import AwsClients

log = structlog.get_logger(__name__)
S = ActionState
Clock = Callable[[], dt.datetime]

DEFAULT_WINDOW_DAYS = 7.0
WINDOW_ENV = "FINOPS_ROLLBACK_WINDOW_DAYS"
WATCHER = "rollback-watch"

NEEDED_AGAIN = "started again by someone"
OWNER_OBJECTION = "owner objection"
CLOUDWATCH_ALARM = "cloudwatch alarm"

# What "up again" means after a stop, per kind. `pending`/`starting` count: someone
# already asked AWS to start it.
_UP_AGAIN: dict[ResourceKind, frozenset[str]] = {
    ResourceKind.EC2_INSTANCE: frozenset({"running", "pending"}),
    ResourceKind.RDS_INSTANCE: frozenset({"available", "starting"}),
}
# AWS starts a stopped RDS instance by itself after 7 days: that is not a person needing it.
_RDS_AUTO_START = dt.timedelta(days=7)


@dataclass(frozen=True)
class TriggerResult:
    action_id: int | None  # None: the trigger itself failed (for example an alarm read)
    trigger: str
    result: str  # rolled_back | failed | skipped | stopped | error
    detail: str = ""
    fired_by: str = ""


@dataclass
class _Candidate:
    id: int
    policy: str
    account: str
    region: str
    kind: str
    action: str
    resource: str
    finished_at: dt.datetime
    post_state: dict[str, Any] = field(default_factory=dict)


class RollbackTriggers:
    def __init__(
        self,
        *,
        settings: Settings | None = None,
        engine: ActionEngine | None = None,
        clients: AwsClients | None = None,
        audit: AuditLogger | None = None,
        clock: Clock = utcnow,
        windows: Mapping[str, float] | None = None,
        alarms: Mapping[str, Sequence[str]] | None = None,
        pack: PolicyPack | None = None,
    ) -> None:
        self._settings = settings
        self._audit = audit or AuditLogger()
        self._clock = clock
        self._engine = engine or ActionEngine(settings=settings, audit=self._audit, clock=clock)
        self._clients = clients
        self._windows = dict(windows or {})
        self._alarms = {p: list(names) for p, names in (alarms or {}).items()}
        self._pack = pack

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    def window(self, policy: str) -> dt.timedelta:
        """The constructor's mapping, else the policy's `rollback.window-days`, else the
        environment, else 7 days."""
        if policy in self._windows:
            return dt.timedelta(days=float(self._windows[policy]))
        configured = self._policy_rollback(policy).window_days
        if configured is not None:
            return dt.timedelta(days=configured)
        raw = os.environ.get(WINDOW_ENV, "").strip()
        try:
            days = float(raw) if raw else DEFAULT_WINDOW_DAYS
        except ValueError as exc:
            raise ValueError(f"{WINDOW_ENV}={raw!r}: expected a number of days") from exc
        if days < 0:
            raise ValueError(f"{WINDOW_ENV}={raw!r}: must not be negative")
        return dt.timedelta(days=days)

    def alarms(self, policy: str) -> list[str]:
        """The constructor's mapping, else the policy's `rollback.alarms`."""
        if policy in self._alarms:
            return self._alarms[policy]
        return list(self._policy_rollback(policy).alarms)

    def _policies(self) -> PolicyPack:
        if self._pack is None:
            try:
                self._pack = self._context().pack()
            except Exception as exc:  # noqa: BLE001 - defaults still watch every action
                log.warning("policy pack unreadable: default rollback windows", error=str(exc))
                self._pack = PolicyPack()
        return self._pack

    def _policy_rollback(self, policy: str) -> Rollback:
        found = self._policies().by_name.get(policy)
        return found.rollback if found is not None else Rollback()

    def _context(self) -> ExecutionContext:
        if self._clients is None:
            self._clients = AwsClients(endpoint_url=self.settings.aws_endpoint_url)
        # The context is used read-only here (describes); changes go through the engine.
        return ExecutionContext(
            self.settings, self._clients, EmergencyStop(audit=self._audit), None
        )

    # -- the periodic check ------------------------------------------------------------
    def check(self, session: Session | None = None) -> list[TriggerResult]:
        """Fire every trigger due now. With a session, the needed-again records are made in
        it (the caller commits); alarm rollbacks always run in the engine's own
        transactions, after every read, so no write lock is held across AWS calls."""
        now = self._clock()
        with session_scope() if session is None else nullcontext(session) as s:
            candidates = self._candidates(s, now)
            restarted = _started_by_finops(s, candidates)
        ctx = self._context()
        results: list[TriggerResult] = []
        needed: list[tuple[_Candidate, str]] = []
        for c in candidates:
            if c.id in restarted:
                continue  # up because a finops start ran (the morning's scheduled start)
            state, error = self._up_again(ctx, c, now)
            if error:
                results.append(TriggerResult(c.id, NEEDED_AGAIN, "error", error, WATCHER))
            elif state:
                needed.append((c, state))
        done = {c.id for c, _ in needed}
        if needed:  # recorded first: an alarm's undo below must not cost us these
            with session_scope() if session is None else nullcontext(session) as s:
                results.extend(self._mark_needed(s, needed, now))
        results.extend(self._alarm_rollbacks(ctx, [c for c in candidates if c.id not in done]))
        return results

    def _candidates(self, session: Session, now: dt.datetime) -> list[_Candidate]:
        named = [*self._windows, *(p.name for p in self._policies())]
        widest = max([self.window(p) for p in named] + [self.window("")])
        rows = session.scalars(
            select(ActionRow)
            .where(ActionRow.state == S.SUCCEEDED, ActionRow.finished_at >= now - widest)
            .order_by(ActionRow.id)
        )
        return [
            _Candidate(
                r.id,
                r.policy_name,
                r.account_id,
                r.region,
                r.kind,
                r.action,
                r.resource_id,
                r.finished_at,
                dict(r.post_state or {}),
            )
            for r in rows
            if r.finished_at is not None
            and r.finished_at <= now
            and now - r.finished_at <= self.window(r.policy_name)
        ]

    def _up_again(
        self, ctx: ExecutionContext, c: _Candidate, now: dt.datetime
    ) -> tuple[str | None, str | None]:
        """(the state it is up in, or None; an error reading it, or None)."""
        kind = ResourceKind(c.kind)
        if c.action != "stop" or kind not in _UP_AGAIN:
            return None, None
        if kind is ResourceKind.RDS_INSTANCE and now - c.finished_at >= _RDS_AUTO_START:
            return None, None
        row = _row_view(c)
        try:
            found = operation_for(c.action, kind).describe(ctx.op_context(row, None), c.resource)
        except ResourceGone:
            return None, None  # gone is not "needed"; nothing to record
        except Exception as exc:  # noqa: BLE001 - one account's failure is its candidate's only
            # Not only AWS errors: an open breaker (CircuitOpenError) or an account taken out
            # of FINOPS_ACCOUNTS (WrongAccountError) must not hide the other accounts' triggers.
            return None, f"account {c.account}: {describe_error(exc)}"
        return (found.state if found.state in _UP_AGAIN[kind] else None), None

    def _mark_needed(
        self, session: Session, needed: list[tuple[_Candidate, str]], now: dt.datetime
    ) -> list[TriggerResult]:
        results = []
        for c, state in needed:
            row = session.get(ActionRow, c.id)
            if row is None or row.state != S.SUCCEEDED:
                continue  # rolled back meanwhile by someone else
            # Someone else did the undo: record the truth, call nothing in AWS.
            transition(
                session,
                row,
                S.ROLLED_BACK,
                actor=WATCHER,
                audit=self._audit,
                event="rollback",
                details={
                    "trigger": NEEDED_AGAIN,
                    "fired_by": "an AWS principal outside finops (observed state)",
                    "observed_state": state,
                    "aws_call": "none: already undone",
                },
                now=now,
            )
            results.append(
                TriggerResult(c.id, NEEDED_AGAIN, "rolled_back", f"{c.resource} {state}", WATCHER)
            )
        return results

    # -- CloudWatch alarms -------------------------------------------------------------
    def _alarm_rollbacks(
        self, ctx: ExecutionContext, candidates: Iterable[_Candidate]
    ) -> list[TriggerResult]:
        by_place: dict[tuple[str, str, str], list[_Candidate]] = {}
        for c in candidates:
            if self.alarms(c.policy):
                by_place.setdefault((c.policy, c.account, c.region), []).append(c)
        results: list[TriggerResult] = []
        for (policy, account, region), group in sorted(by_place.items()):
            try:
                alarming = self._alarming(ctx, group[0], self.alarms(policy))
            except Exception as exc:  # noqa: BLE001 - one group's failure is its own only
                # Fail safe both ways: no rollback on an unreadable alarm, but say so. Any
                # error (an open breaker, an offboarded account), not only AWS's.
                detail = f"account {account} region {region}: {describe_error(exc)}"
                results.append(TriggerResult(None, CLOUDWATCH_ALARM, "error", detail, policy))
                continue
            for c in sorted(group, key=lambda x: x.id, reverse=True):  # newest first
                fired = [a for a in alarming if a["since"] >= c.finished_at]
                if fired:
                    alarm = fired[0]
                    results.append(
                        self._rollback(
                            c.id,
                            CLOUDWATCH_ALARM,
                            f"cloudwatch:{alarm['name']}",
                            {
                                "alarm": alarm["name"],
                                "alarm_since": alarm["since"].isoformat(),
                                "alarm_reason": alarm["reason"],
                                "policy": policy,
                            },
                        )
                    )
        return results

    def _alarming(
        self, ctx: ExecutionContext, c: _Candidate, names: list[str]
    ) -> list[dict[str, Any]]:
        client = ctx.op_context(_row_view(c), None).client_for("cloudwatch")
        found: list[dict[str, Any]] = []
        for page in client.get_paginator("describe_alarms").paginate(
            AlarmNames=names, StateValue="ALARM"
        ):
            for alarm in page.get("MetricAlarms", []) + page.get("CompositeAlarms", []):
                since = alarm_since(alarm)
                if since is not None:
                    found.append(
                        {
                            "name": alarm["AlarmName"],
                            "since": since,
                            "reason": str(alarm.get("StateReason", ""))[:500],
                        }
                    )
        return found

    # -- owner objection ---------------------------------------------------------------
    def object(self, action_id: int, who: str, reason: str) -> TriggerResult:
        """The owner says the resource is needed: audit the objection, then roll back."""
        if not who.strip() or not reason.strip():
            raise ValueError("an objection needs who objects and why")
        now = self._clock()
        with session_scope() as session:
            row = session.get(ActionRow, action_id)
            if row is None:
                raise LookupError(f"no action {action_id}")
            finished, policy = row.finished_at, row.policy_name
        if finished is None or now - finished > self.window(policy):
            # Recorded all the same: the objection is a fact even when it comes late.
            self._audit.log(
                "rollback",
                subject_type="action",
                subject_id=action_id,
                actor=who,
                outcome="objection too late",
                details={"trigger": OWNER_OBJECTION, "who": who, "reason": reason},
            )
            return TriggerResult(
                action_id,
                OWNER_OBJECTION,
                "skipped",
                "outside the rollback window: roll back by hand (finops actions rollback)",
                who,
            )
        return self._rollback(action_id, OWNER_OBJECTION, who, {"who": who, "reason": reason})

    # -- the undo, through the engine ------------------------------------------------
    def _rollback(
        self, action_id: int, trigger: str, fired_by: str, details: dict[str, Any]
    ) -> TriggerResult:
        # The trigger is audited before the undo, so it is on record even if the undo fails;
        # the engine then audits the transition (or why it was impossible).
        self._audit.log(
            "rollback",
            subject_type="action",
            subject_id=action_id,
            actor=fired_by,
            outcome="triggered",
            details={"trigger": trigger, "fired_by": fired_by, **details},
        )
        try:
            outcome = self._engine.rollback(action_id, fired_by)
        except EmergencyStopEngaged as exc:
            return TriggerResult(action_id, trigger, "stopped", str(exc), fired_by)
        except Exception as exc:  # noqa: BLE001 - one undo's failure is this trigger's only
            return TriggerResult(action_id, trigger, "error", describe_error(exc), fired_by)
        return TriggerResult(action_id, trigger, outcome.result, outcome.detail, fired_by)


def _started_by_finops(session: Session, candidates: list[_Candidate]) -> set[int]:
    """The stops whose resource a later finops `start` action took (an off-hours policy's
    morning start): running again is then no sign that someone needed it."""
    stops = [c for c in candidates if c.action == "stop"]
    if not stops:
        return set()
    starts = session.execute(
        select(ActionRow.account_id, ActionRow.region, ActionRow.kind, ActionRow.resource_id)
        .add_columns(ActionRow.claimed_at)
        .where(
            ActionRow.action == "start",
            ActionRow.state.in_([S.EXECUTING, S.SUCCEEDED]),
            ActionRow.resource_id.in_({c.resource for c in stops}),
            ActionRow.claimed_at.is_not(None),
        )
    )
    latest: dict[tuple[str, str, str, str], dt.datetime] = {}
    for account, region, kind, resource, claimed in starts:
        key = (account, region, kind, resource)
        latest[key] = max(claimed, latest.get(key, claimed))
    return {
        c.id
        for c in stops
        if (at := latest.get((c.account, c.region, c.kind, c.resource))) is not None
        and at >= c.finished_at
    }


def alarm_since(alarm: dict[str, Any]) -> dt.datetime | None:
    """When the alarm went INTO its state: StateUpdatedTimestamp also moves when only the
    reason of an alarm firing since before the action changes (moto sends only that)."""
    since = alarm.get("StateTransitionedTimestamp") or alarm.get("StateUpdatedTimestamp")
    if not isinstance(since, dt.datetime):
        return None
    return since if since.tzinfo else since.replace(tzinfo=dt.UTC)


def _row_view(c: _Candidate) -> ActionRow:
    """A detached row with what op_context needs (account, region, key)."""
    return ActionRow(
        id=c.id,
        account_id=c.account,
        region=c.region,
        idempotency_key=f"rollback-watch:{c.id}",
    )
