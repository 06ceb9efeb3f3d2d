"""SafetyChecker: gathers the facts about an action and lets the safety rules judge it.

It judges at planning (stored inventory, no AWS calls) and again immediately before
execution (a fresh describe, a fresh dependency probe, the policy re-evaluated on the fresh
resource). Any error while gathering facts blocks: fail closed. The runbook calls
`print(SafetyChecker().system_status())` and `print(SafetyChecker().run_full_check())`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, object_session

from backend.config import Settings, get_settings, parse_window
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStopEngaged, redis_only
from backend.core.freshness import execution_evidence, max_age, max_age_at_execution
from backend.core.models import (
    ActionRow,
    AuditEventRow,
    MetricSummaryRow,
    OverrideRow,
    ResourceRow,
)
from backend.core.repositories import relations_inventoried, to_resource
from backend.core.types import utcnow
from backend.domain.lifecycle import ActionState, policy_approver
from backend.domain.policy.evaluate import EvaluationContext
from backend.domain.policy.model import Mode, Policy
from backend.domain.policy.truth import Truth
from backend.domain.resources import MetricSpec, Resource, ResourceKind
from backend.domain.safety import (
    ActionFacts,
    BatchItem,
    Dependencies,
    Exemption,
    FleetCounts,
    Judgement,
    Rule,
    SafetyConfig,
    Verdict,
    check_batch,
    fresh_data,
    judge,
)
from backend.providers.aws.dependencies import probe_dependencies
from backend.providers.aws.operations import Operation, OperationContext, ResourceGone
from backend.providers.aws.retry import describe_error


def safety_config(settings: Settings) -> SafetyConfig:
    return SafetyConfig(
        protected_tag_key=settings.protected_tag_key,
        protected_tag_values=frozenset(settings.protected_tag_values),
        opt_out_tag=settings.opt_out_tag,
        protected_accounts=frozenset(settings.protected_accounts),
        protected_regions=frozenset(settings.protected_regions),
        freeze_windows=tuple(parse_window(w) for w in settings.freeze_windows),
        max_actions_per_run=settings.max_actions_per_run,
        max_actions_per_hour=settings.max_actions_per_hour,
        max_percent_of_fleet_per_run=settings.max_percent_of_fleet_per_run,
    )


# The override scopes the safety rules enforce; policy scope is PolicyManager's.
EXEMPTING_SCOPES = ("resource", "account")


def active_exemptions(session: Session, now: dt.datetime) -> tuple[Exemption, ...]:
    """Every active resource- and account-scope override; the rule picks those that apply.

    All of them, not only this action's: matching stays in the pure rule, where it is tested.
    """
    rows = session.scalars(
        select(OverrideRow)
        .where(
            OverrideRow.scope.in_(EXEMPTING_SCOPES),
            or_(OverrideRow.expires_at.is_(None), OverrideRow.expires_at > now),
        )
        .order_by(OverrideRow.id)
    )
    return tuple(
        Exemption(r.scope, r.target, r.reason, r.created_by, until=r.expires_at, ident=r.id)
        for r in rows
    )


def facts_for(
    row: ActionRow,
    resource: Resource | None,
    *,
    now: dt.datetime,
    exemptions: tuple[Exemption, ...],
    **kw: Any,
) -> ActionFacts:
    """`exemptions` is required: forgetting to read the overrides must not let an action by."""
    # An expired approval approves nothing, an automatic policy's included.
    expired = row.approval_expires_at is not None and row.approval_expires_at <= now
    approved = (row.approved_by is not None or row.mode == "auto") and not expired
    return ActionFacts(
        action=row.action,
        kind=ResourceKind(row.kind),
        account_id=row.account_id,
        region=row.region,
        resource_id=row.resource_id,
        resource=resource,
        approved=approved,
        risk=row.risk,
        mode=row.mode,
        exemptions=exemptions,
        **kw,
    )


@dataclass
class SafetyStatus:
    active: bool
    emergency_stop: dict[str, Any]
    rules: dict[str, str]
    recent_failures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"safety system: {'ACTIVE' if self.active else 'NOT ACTIVE'}"]
        stop = self.emergency_stop
        lines.append(
            "emergency stop: "
            + (
                f"ENGAGED by {stop.get('engaged_by')} at "
                f"{stop.get('engaged_at')}: {stop.get('reason')}"
                if stop.get("engaged")
                else redis_only(bool(stop.get("released")))
                if stop.get("stop_key_left")
                else "off"
            )
        )
        lines.append("rules in force:")
        lines += [f"  {name}: {value}" for name, value in self.rules.items()]
        lines.append(f"blocked in the last 24h: {len(self.recent_failures)}")
        lines += [f"  {line}" for line in self.recent_failures[-10:]]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass
class SelfTestReport:
    results: list[tuple[str, bool, str]]

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.results)

    def __str__(self) -> str:
        lines = [
            f"{'PASS' if ok else 'FAIL'} {name}: {detail}" for name, ok, detail in self.results
        ]
        failed = sum(1 for _, ok, _ in self.results if not ok)
        lines.append(f"safety self-test: {len(self.results) - failed} passed, {failed} failed")
        return "\n".join(lines)


class SafetyChecker:
    def __init__(
        self,
        *,
        settings: Settings | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        probe: Callable[[OperationContext, Resource], Any] = probe_dependencies,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._probe = probe

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    @property
    def config(self) -> SafetyConfig:
        return safety_config(self.settings)

    # -- judging ------------------------------------------------------------------------
    def judge_planned(
        self,
        row: ActionRow,
        resource: Resource | None,
        session: Session | None = None,
        *,
        observed: Sequence[tuple[str, dt.datetime]] | None = None,
    ) -> Judgement:
        """At planning, on the stored inventory: the static rules (no AWS calls).

        Overrides are read in `session`, else in the row's own (the planner's transaction),
        else in a new one; if they cannot be read, the action is blocked (fail closed).
        `observed` (what the plan rests on, and when it was collected) is judged against
        the freshness bound: stale evidence blocks.
        """
        now = self._clock()
        try:
            exemptions = self._exemptions(
                session if session is not None else object_session(row), now
            )
            judgement = judge(
                facts_for(row, resource, now=now, exemptions=exemptions),
                self.config,
                now,
                before_execution=False,
            )
            if observed is not None:
                fresh = fresh_data(observed, now, max_age(self.settings))
                judgement = Judgement((*judgement.verdicts, fresh))
            return judgement
        except Exception as exc:  # noqa: BLE001 - any error judging blocks
            return _fail_closed(exc)

    @staticmethod
    def _exemptions(session: Session | None, now: dt.datetime) -> tuple[Exemption, ...]:
        if session is not None:
            return active_exemptions(session, now)
        with session_scope() as own:
            return active_exemptions(own, now)

    def judge_before_execution(
        self,
        session: Session,
        row: ActionRow,
        policy: Policy | None,
        operation: Operation,
        ctx: OperationContext,
    ) -> tuple[Judgement, Resource | None]:
        """Fresh describe, fresh dependencies, the policy re-evaluated: every rule."""
        now = self._clock()
        try:
            # Read before any AWS call; an unreadable overrides table blocks (fail closed).
            exemptions = active_exemptions(session, now)
            try:
                fresh: Resource | None = operation.describe(ctx, row.resource_id)
            except ResourceGone:
                fresh = None
            still, deps = None, None
            if fresh is not None:
                deps = Dependencies(
                    **dataclasses.asdict(self._probe(ctx, fresh)),
                    undo_backup_of=_undo_backup_of(session, fresh.resource_id),
                )
                still = (
                    self._still_matches(session, policy, fresh, now, deps)
                    if policy is not None
                    else Truth.UNKNOWN
                )
            notice_required = bool(policy is not None and policy.notice.notify)
            noticed_at = _notice_delivered_at(session, row.id) if notice_required else None
            facts = facts_for(
                row,
                fresh,
                now=now,
                exemptions=exemptions,
                still_matches=still,
                dependencies=deps,
                notice_required=notice_required,
                notice_delivered=(noticed_at is not None) if notice_required else None,
            )
            judgement = judge(facts, self.config, now, before_execution=True)
            if policy is not None:
                changed = _policy_changed_since_planned(row, policy, noticed_at, now)
                # The fresh describe renews state and tags, not the stored metrics or the
                # inventory the policy's other filters read: their age is judged too.
                bound = max_age_at_execution(self.settings, policy)
                fresh_enough = fresh_data(execution_evidence(session, row, policy), now, bound)
                judgement = Judgement((*judgement.verdicts, *changed, fresh_enough))
            if policy is not None and not policy.enabled:
                disabled = f"policy {row.policy_name} is disabled or paused"
                judgement = Judgement(
                    (*judgement.verdicts, Verdict(Rule.STILL_MATCHES, False, disabled))
                )
            if policy is None:
                judgement = Judgement(
                    (
                        *judgement.verdicts,
                        Verdict(
                            Rule.STILL_MATCHES,
                            False,
                            f"policy {row.policy_name} is no longer loaded",
                        ),
                    )
                )
            return judgement, fresh
        except EmergencyStopEngaged:
            raise  # not a verdict on the action: the engine hands it back untouched
        except Exception as exc:  # noqa: BLE001 - any error gathering facts blocks
            return _fail_closed(exc), None

    def _still_matches(
        self,
        session: Session,
        policy: Policy,
        fresh: Resource,
        now: dt.datetime,
        deps: Dependencies,
    ) -> Truth:
        """The policy's filters on the fresh resource, with stored metrics and relations, a
        snapshot's own relations as AWS answered just now."""
        neighbours = [
            to_resource(r)
            for r in session.scalars(
                select(ResourceRow).where(
                    ResourceRow.account_id == fresh.account_id,
                    ResourceRow.region == fresh.region,
                    ResourceRow.kind.in_([ResourceKind.EBS_VOLUME.value, ResourceKind.AMI.value]),
                    ResourceRow.gone_at.is_(None),
                )
            )
        ]
        metrics: dict[tuple[str, MetricSpec], float | None] = {}
        stored = session.scalars(
            select(MetricSummaryRow)
            .join(ResourceRow, ResourceRow.id == MetricSummaryRow.resource_pk)
            .where(
                ResourceRow.account_id == fresh.account_id,
                ResourceRow.region == fresh.region,
                ResourceRow.kind == fresh.kind.value,
                ResourceRow.resource_id == fresh.resource_id,
            )
        )
        for m in stored:
            metrics[(fresh.resource_id, MetricSpec(m.namespace, m.metric, m.statistic, m.days))] = (
                m.value
            )
        others = [r for r in neighbours if r.key != fresh.key]
        pair = (fresh.account_id, fresh.region)
        ctx = EvaluationContext.from_resources(
            [*others, fresh],
            now=now,
            metrics=metrics,
            # relations are known only where a scan listed the volumes and AMIs whole
            inventoried=[pair] if pair in relations_inventoried(session) else [],
        )
        return policy.filters.evaluate(fresh, fresh_relations(ctx, fresh, deps), {})

    def check_batch(
        self, batch: list[BatchItem], fleet: FleetCounts, executed_last_hour: int
    ) -> Verdict:
        try:
            return check_batch(
                batch, fleet, executed_last_hour=executed_last_hour, config=self.config
            )
        except Exception as exc:  # noqa: BLE001
            return Verdict(
                Rule.FAIL_CLOSED, False, f"blast radius not checkable: {describe_error(exc)}"
            )

    # -- the runbook's checks ------------------------------------------------------------
    def system_status(self) -> SafetyStatus:
        from backend.core.safety_status import build_status

        return build_status(self)

    def run_full_check(self) -> SelfTestReport:
        from backend.core.safety_selftest import run_self_test

        return SelfTestReport(run_self_test(self.config, self._clock()))


def _notice_delivered_at(session: Session, action_id: int) -> dt.datetime | None:
    """When the owner was last told (the owner-notice flow records a delivered notice as
    outcome 'notified'), or None if never."""
    return session.scalar(
        select(AuditEventRow.occurred_at)
        .where(
            AuditEventRow.subject_type == "action",
            AuditEventRow.subject_id == str(action_id),
            AuditEventRow.event_type == "action_proposed",
            AuditEventRow.outcome == "notified",
        )
        .order_by(AuditEventRow.occurred_at.desc())
        .limit(1)
    )


def _policy_changed_since_planned(
    row: ActionRow, policy: Policy, noticed_at: dt.datetime | None, now: dt.datetime
) -> tuple[Verdict, ...]:
    """What the policy as it is now refuses that it allowed when the action was planned.

    An approval the policy itself gave (`auto`) holds only while the policy is still
    `auto`: switched to `approval` or `report` meanwhile, a person must decide. A grace
    period lengthened after the owner was told runs from that notice, so the owner gets
    the days the policy now promises.
    """
    refused: list[Verdict] = []
    if row.approved_by == policy_approver(row.policy_name) and policy.mode != Mode.AUTO:
        refused.append(
            Verdict(
                Rule.APPROVAL,
                False,
                f"policy {policy.name} approved this in auto mode and is now in "
                f"{policy.mode.value} mode: its approval no longer holds",
            )
        )
    if policy.notice.notify and noticed_at is not None:
        # The slack covers the seconds a notice takes to go out after the plan set
        # not_before; a lengthened grace moves the date by whole days.
        until = noticed_at + dt.timedelta(days=policy.notice.grace_days) - _DELIVERY_SLACK
        if now < until:
            refused.append(
                Verdict(
                    Rule.OWNER_NOTICE,
                    False,
                    f"policy {policy.name} now gives the owner {policy.notice.grace_days} "
                    f"day(s) from the notice of {noticed_at:%Y-%m-%d %H:%M} UTC",
                )
            )
    return tuple(refused)


_DELIVERY_SLACK = dt.timedelta(hours=1)


def _fail_closed(exc: BaseException) -> Judgement:
    return Judgement(
        (Verdict(Rule.FAIL_CLOSED, False, f"could not judge safely: {describe_error(exc)}"),)
    )


def fresh_relations(
    ctx: EvaluationContext, fresh: Resource, deps: Dependencies
) -> EvaluationContext:
    """A snapshot's relations as the dependency probe read them from AWS just now: whether
    its source volume exists, whether an AMI uses it. The stored volume and AMI lists may be
    hours old, or from a scan that could not list them: a volume made and snapshotted since
    would make its snapshot look orphaned."""
    if fresh.kind is not ResourceKind.EBS_SNAPSHOT:
        return ctx
    pair = (fresh.account_id, fresh.region)
    volumes = set(ctx.existing_volume_ids.get(pair, ()))
    volume_id = fresh.attributes.get("VolumeId")
    if deps.source_volume_exists is not None and isinstance(volume_id, str):
        volumes.discard(volume_id)
        if deps.source_volume_exists:
            volumes.add(volume_id)
    backed = set(ctx.ami_snapshot_ids.get(pair, ())) - {fresh.resource_id}
    if deps.backs_amis:
        backed.add(fresh.resource_id)
    return dataclasses.replace(
        ctx,
        existing_volume_ids={**ctx.existing_volume_ids, pair: frozenset(volumes)},
        ami_snapshot_ids={**ctx.ami_snapshot_ids, pair: frozenset(backed)},
    )


def _undo_backup_of(session: Session, resource_id: str) -> tuple[int, ...]:
    """The actions that can still be rolled back and restore from this resource: a volume's
    snapshot (an orphan, as its volume is deleted), an instance's image."""
    rows = session.scalars(
        select(ActionRow.id).where(
            ActionRow.backup_ref == resource_id,
            ActionRow.state.in_([ActionState.SUCCEEDED.value, ActionState.FAILED.value]),
        )
    )
    return tuple(sorted(rows))
