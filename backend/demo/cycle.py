"""The demo's whole cycle on the simulated account: plan, approve, act, roll back.

Owners get notice first, so the cycle plans on day 0 and acts as each grace period ends
(the engine's clock is injected; nothing waits). All changes happen in the in-process
simulated account.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import func, select

from backend.config import Settings, overridden_environment
from backend.core.action_engine import ActionEngine, RunReport
from backend.core.action_planner import ActionPlanner, PlanResult
from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop, EmergencyStopEngaged
from backend.core.models import ActionRow, ResourceRow
from backend.core.safety_checker import safety_config
from backend.core.types import utcnow
from backend.demo.mailbox import SmtpPeer
from backend.domain.policy.model import PolicyPack
from backend.providers.aws.session import AwsClients

PLANNER, APPROVER, OPERATOR = "demo-planner", "demo-approver", "demo-operator"


@dataclass
class CycleResult:
    plan: PlanResult
    approved_by_person: int
    first_try: RunReport
    chosen: RunReport
    rolled_back: str
    blocked_by_rule: Counter[str] = field(default_factory=Counter)
    notices: int = 0
    saved_per_month: float = 0.0
    emergency_stop: str | None = None  # the engaged stop that ended the cycle early


def run_cycle(settings: Settings, pack: PolicyPack, clients: AwsClients) -> CycleResult:
    """Owners are really told (by mail, to the demo's loopback mailbox) before anything acts:
    the execution re-check refuses an action whose promised notice was not delivered.

    Only this cycle's actions are approved, run and counted, whatever else the database holds.
    An emergency stop engaged meanwhile ends the cycle where it is, and says so."""
    day0 = utcnow()
    with demo_mailbox() as mailbox, session_scope() as session:
        plan = ActionPlanner(settings=settings, clock=lambda: day0).plan(
            session, pack, requested_by=PLANNER, notify_owners=True
        )
        notices = len(mailbox.mail)
        ours = sorted({*plan.created, *plan.blocked})
        moments = sorted(
            {
                row.not_before or day0
                for row in session.scalars(
                    select(ActionRow).where(
                        ActionRow.id.in_(ours),
                        ActionRow.state.in_(["approved", "awaiting_approval"]),
                    )
                )
            }
        )
    first_try: RunReport | None = None
    chosen = RunReport(run_id=None, dry_run=False)
    approved_by_person = 0
    stop: str | None = None
    engine = ActionEngine(settings=settings, clients=clients, pack=pack, worker="demo-worker")
    # Act when each owner's notice ends, as the scheduler would.
    for moment in moments:
        at = moment + dt.timedelta(minutes=1)
        with session_scope() as session:
            planner = ActionPlanner(settings=settings, clock=fixed(at))
            for action_id in session.scalars(
                select(ActionRow.id).where(
                    ActionRow.id.in_(ours),
                    ActionRow.state == "awaiting_approval",
                    ActionRow.not_before <= at,
                )
            ).all():
                planner.approve(session, action_id, APPROVER)
                approved_by_person += 1
        engine = ActionEngine(
            settings=settings,
            clients=clients,
            pack=pack,
            clock=fixed(at),
            worker="demo-worker",
        )
        report = engine.execute(ours, dry_run=False, triggered_by=OPERATOR)
        if report.stopped_by and not report.emergency_stop:
            first_try = first_try or report
            report = engine.execute(
                _batch_within_limits(settings, pack, ours), dry_run=False, triggered_by=OPERATOR
            )
        chosen.outcomes += report.outcomes
        if report.emergency_stop:
            stop = report.stopped_by
            break
    done = [o for o in chosen.outcomes if o.result == "succeeded"]
    rolled_back = "nothing to roll back"
    try:
        if stop is None and done:
            outcome = engine.rollback(done[0].action_id, OPERATOR)
            rolled_back = f"action {outcome.action_id}: {outcome.result}: {outcome.detail}"
        if stop is None:  # engaged before anything was due, or during the last action
            EmergencyStop().check()
    except EmergencyStopEngaged as exc:
        stop = str(exc)
    if stop is not None and done:
        rolled_back = "not attempted: the emergency stop is engaged"
    result = CycleResult(
        plan,
        approved_by_person,
        first_try or RunReport(None, False),
        chosen,
        rolled_back,
        notices=notices,
        emergency_stop=stop,
    )
    with session_scope() as session:
        for row in session.scalars(
            select(ActionRow).where(ActionRow.id.in_(ours), ActionRow.state == "blocked")
        ):
            for verdict in (row.safety_verdict or {}).get("verdicts", []):
                # approval decides the queue at planning; it is not what blocked these
                if not verdict["ok"] and verdict["rule"] != "approval-required":
                    result.blocked_by_rule[verdict["rule"]] += 1
        result.saved_per_month = float(
            session.scalar(
                select(func.coalesce(func.sum(ActionRow.estimated_monthly_savings), 0.0)).where(
                    ActionRow.id.in_(ours), ActionRow.state == "succeeded"
                )
            )
            or 0.0
        )
    return result


@contextmanager
def demo_mailbox() -> Iterator[SmtpPeer]:
    """Point the notification settings at a loopback mailbox for the length of the block,
    and away from every channel of the user's: a simulated account's alerts and notices
    must never reach a real Slack, webhook or mailbox (set blank, which also beats .env)."""
    names = {
        "FINOPS_NOTIFY_SMTP_HOST": "127.0.0.1",
        "FINOPS_NOTIFY_SMTP_USER": "",
        "FINOPS_NOTIFY_SMTP_STARTTLS": "false",
        "FINOPS_NOTIFY_EMAIL_FROM": "finops-demo@example.com",
        "FINOPS_NOTIFY_EMAIL_TO": "",
        "FINOPS_NOTIFY_FALLBACK_CONTACT": "finops@example.com",
        "FINOPS_NOTIFY_SLACK_WEBHOOK_URL": "",
        "FINOPS_NOTIFY_WEBHOOK_URL": "",
        "FINOPS_NOTIFY_CHANNELS": "",
        "FINOPS_NOTIFY_OWNER_ROUTES": "",
    }
    with (
        SmtpPeer() as mailbox,
        overridden_environment(names | {"FINOPS_NOTIFY_SMTP_PORT": str(mailbox.port)}),
    ):
        yield mailbox


def fixed(moment: dt.datetime) -> Callable[[], dt.datetime]:
    return lambda: moment


def _batch_within_limits(settings: Settings, pack: PolicyPack, ours: list[int]) -> list[int]:
    """The operator's choice: the largest batch, policy by policy, that every limit allows."""
    config = safety_config(settings)
    limits = {p.name: p.limits for p in pack.policies}
    with session_scope() as session:
        fleet = dict(
            session.execute(
                select(ResourceRow.kind, func.count())
                .where(ResourceRow.gone_at.is_(None))
                .group_by(ResourceRow.kind)
            ).all()
        )
        due = session.scalars(
            select(ActionRow)
            .where(ActionRow.id.in_(ours), ActionRow.state == "approved")
            .order_by(ActionRow.id)
        ).all()
        chosen: list[int] = []
        per_kind: Counter[str] = Counter()
        per_policy: Counter[str] = Counter()
        for row in due:
            total = fleet.get(row.kind, 0)
            policy = limits.get(row.policy_name)
            kind_cap = int(total * config.max_percent_of_fleet_per_run / 100)
            policy_cap = min(
                policy.max_actions_per_run if policy and policy.max_actions_per_run else 10**9,
                int(total * policy.max_percent_of_fleet / 100)
                if policy and policy.max_percent_of_fleet
                else 10**9,
            )
            if (
                len(chosen) < config.max_actions_per_run
                and per_kind[row.kind] < kind_cap
                and per_policy[row.policy_name] < policy_cap
            ):
                chosen.append(row.id)
                per_kind[row.kind] += 1
                per_policy[row.policy_name] += 1
        return chosen
