"""AutoRemediationEngine: one cycle (scan, plan, guard, execute), and the runbook's answers.

`get_status`, `emergency_stop`, `retry_action`, `test_safe_action`; those the runbook calls
without print() also print (runbook_output.echo). Work runs in-process through `dispatcher`:
the Celery runtime will plug in a dispatcher that queues tasks, and callers stay the same.
"""

from __future__ import annotations

import datetime as dt
import getpass
import socket
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from backend.config import Settings, get_settings
from backend.core.action_engine import ActionEngine, ActionOutcome, RunReport
from backend.core.action_planner import ActionPlanner, PlanResult
from backend.core.automation_audit_logger import AuditLogger
from backend.core.database import check_database, database_url, redacted, session_scope
from backend.core.emergency_stop import EmergencyStop, EmergencyStopEngaged
from backend.core.execution_context import ExecutionContext, refuse_changes
from backend.core.migrations import ensure_schema
from backend.core.models import ActionRow, WorkerHeartbeatRow
from backend.core.notification_service import NotificationService
from backend.core.policy_manager import PolicyManager
from backend.core.remediation_reports import (
    CheckReport,
    CycleSummary,
    EngineStatus,
    ResumeResult,
    StopResult,
)
from backend.core.repositories import action_summary, active_actions, due_conditions
from backend.core.runbook_output import echo
from backend.core.safety_checker import SafetyChecker
from backend.core.scan_service import ScanOutcome, ScanService
from backend.core.types import utcnow
from backend.domain.lifecycle import ActionState
from backend.domain.policy.model import PolicyPack
from backend.domain.policy.truth import Truth
from backend.domain.resources import Resource, ResourceKind
from backend.domain.safety import ActionFacts, Dependencies, Judgement, Rule, judge
from backend.providers.aws.operations import operation_for
from backend.providers.aws.retry import describe_error
from backend.providers.aws.session import AwsClients

S = ActionState
FAILURE_RATE_ALERT = 0.5  # the runbook's P1 threshold
AUDIT_OK = "audit logging OK"  # how AuditLogger.test_logging() reports success
FIND_FAILED = "list failed ones with `finops actions list --state failed`"


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class Dispatcher(Protocol):
    """Where approved actions run: the seam for the Celery runtime (a queueing dispatcher)."""

    name: str

    def run(
        self, engine: ActionEngine, ids: list[int] | None, *, dry_run: bool, triggered_by: str
    ) -> RunReport: ...

    def halt(self) -> str: ...  # on an emergency stop: drop queued work, say what was done

    def resume(self) -> str: ...  # after a release: workers take up work again, say so


class InProcessDispatcher:
    name = "in-process"

    def run(
        self, engine: ActionEngine, ids: list[int] | None, *, dry_run: bool, triggered_by: str
    ) -> RunReport:
        return engine.execute(ids, dry_run=dry_run, triggered_by=triggered_by)

    def halt(self) -> str:
        return "in-process: nothing queued; the engine checks the stop before each claim and call"

    def resume(self) -> str:
        return "in-process: nothing to tell, the next run reads the released stop"


class AutoRemediationEngine:
    def __init__(
        self,
        *,
        settings: Settings | None = None,
        clients: AwsClients | None = None,
        safety: SafetyChecker | None = None,
        audit: AuditLogger | None = None,
        emergency: EmergencyStop | None = None,
        notifier: NotificationService | None = None,
        policies: PolicyManager | None = None,
        pack: PolicyPack | None = None,
        dispatcher: Dispatcher | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        # These constructors read no settings and open no connection: that waits for first use.
        self._settings = settings
        self._clients = clients
        self.safety = safety or SafetyChecker(settings=settings, clock=clock)
        self.audit = audit or AuditLogger()
        self.notifier = notifier or NotificationService()
        self.emergency = emergency or EmergencyStop(
            audit=self.audit, notifier=self.notifier, clock=clock
        )
        self.policies = policies or PolicyManager()
        self.pack = pack
        self._dispatcher = dispatcher
        self._clock = clock

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    @property
    def dispatcher(self) -> Dispatcher:
        """In-process when embedded; with REDIS_URL, the Celery queues (chosen on first use)."""
        if self._dispatcher is None:
            if self.settings.redis_url:
                from backend.runtime.dispatch import CeleryDispatcher

                self._dispatcher = CeleryDispatcher()
            else:
                self._dispatcher = InProcessDispatcher()
        return self._dispatcher

    def _aws(self) -> AwsClients:
        self._clients = self._clients or AwsClients(endpoint_url=self.settings.aws_endpoint_url)
        return self._clients

    def _engine(self, pack: PolicyPack | None = None) -> ActionEngine:
        return ActionEngine(
            settings=self._settings,
            clients=self._aws(),
            safety=self.safety,
            audit=self.audit,
            emergency=self.emergency,
            pack=pack or self.pack,
            clock=self._clock,
        )

    # -- P0: stop everything ------------------------------------------------------------------
    def emergency_stop(
        self, reason: str = "emergency stop from the runbook", actor: str | None = None
    ) -> StopResult:
        """Engage the persisted stop first (nothing may delay it), then list what it held."""
        notes: list[str] = []
        self.emergency.set_stop_key(reason)  # the workers stop before the database answers
        try:
            ensure_schema()
        except Exception as exc:  # noqa: BLE001 - engine_state is in every revision: engage anyway
            notes.append(f"warning: {_why(exc)}")
        try:
            was_engaged = self.emergency.state().engaged
        except Exception:  # noqa: BLE001 - engage() below says what is wrong with the database
            was_engaged = False
        try:
            state = self.emergency.engage(reason, actor or default_actor())
        except Exception as exc:
            echo(f"EMERGENCY STOP NOT PERSISTED: {exc}")
            echo("scale the workers to zero: kubectl scale deployment finops-worker --replicas=0")
            raise
        notes += [f"AUDIT EVENT NOT WRITTEN: {state.audit_error}"] if state.audit_error else []
        notes += [f"EMERGENCY ALERT NOT SENT: {state.alert_error}"] if state.alert_error else []
        notes.append(f"dispatcher: {self.dispatcher.halt()}")
        try:
            with session_scope() as session:
                held = [action_summary(r) for r in active_actions(session)]
        except Exception as exc:  # noqa: BLE001 - the stop holds; the listing is secondary
            held, notes = [], [*notes, f"active actions not listed: {_why(exc)}"]
        result = StopResult(state, held, was_engaged, notes)
        for line in str(result).splitlines():
            echo(line)
        return result

    def resume(self, actor: str, *, is_admin: bool) -> ResumeResult:
        """Release the stop (admins only, audited; raises as release() does), then tell the
        workers to consume actions again at once rather than at the scheduler's next tick."""
        state = self.emergency.release(actor, is_admin=is_admin)
        return ResumeResult(state, [f"dispatcher: {self.dispatcher.resume()}"])

    # -- the runbook's status -----------------------------------------------------------------
    def get_status(self) -> EngineStatus:
        """Never raises: what cannot be read is a problem, and the state says degraded."""
        in_process = self.dispatcher.name == "in-process"
        mode = "distributed (REDIS_URL set)" if self.settings.redis_url else "embedded"
        status = EngineStatus(f"{mode}, dispatch {self.dispatcher.name}", redacted(database_url()))
        problems, engaged, database_ok = status.problems, False, False
        key_left = False
        try:
            check_database()
            ensure_schema()  # embedded SQLite migrates itself; a server database is only checked
            status.database, database_ok = status.database + " (schema current)", True
        except Exception as exc:  # noqa: BLE001 - reported
            problems.append(f"database: {_why(exc)}")
        try:
            stop = self.emergency.state()  # with a stop key left in Redis, which also stops
            engaged, status.emergency_stop = stop.stops, stop.describe()
            key_left = stop.stop_key_left
        except Exception as exc:  # noqa: BLE001 - and the engine fails closed on it
            status.emergency_stop = "UNREADABLE: the engine fails closed (nothing executes)"
            problems.append(f"emergency stop: {_why(exc)}")
        if database_ok:
            try:
                with session_scope() as session:
                    self._activity(session, status, self._clock(), in_process)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"actions: {_why(exc)}")
        if self.settings.redis_url:
            self._distributed(status)
        try:  # a refused pack plans and runs nothing: the engine is not "running" then
            files = self.policies.check(database=False) if self.pack is None else None
            if files is not None and not files.ok:
                problems.append(f"policies: {files.lines[-1]} (validate_all_policies names them)")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"policies: {_why(exc)}")
        try:
            failed = self.notifier.failed_notifications(hours=24)
            n = len(self.notifier.channels())
            channels = f"{n} channel(s)" if n else "no channel (kept in the database only)"
            status.notifications = f"{channels}; {len(failed)} failed in the last 24h"
            if failed:
                problems.append(f"notifications: {len(failed)} failed in the last 24h")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"notifications: {_why(exc)}")
        if engaged:
            why = "emergency stop key left in Redis" if key_left else "emergency stop"
            status.state = f"stopped ({why})"
        elif problems:
            status.state = "degraded (" + ", ".join(p.split(":")[0] for p in problems) + ")"
        return status

    def _distributed(self, status: EngineStatus) -> None:
        """What only Redis knows: the queues' lengths, and the shared circuit breakers."""
        import redis

        from backend.providers.aws.breakers import BreakerRegistry

        url = self.settings.redis_url or ""
        try:
            client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            queued = {q: int(client.llen(q)) for q in ("scans", "actions", "notifications")}
            status.backlog += "; queued: " + ", ".join(f"{q} {n}" for q, n in queued.items())
            breakers = BreakerRegistry(url).states()
            opened = [b for b in breakers if b.state != "closed"]
            status.circuit_breakers = (
                "; ".join(f"{b.key.label} {b.state} ({b.last_error})" for b in opened)
                or f"{len(breakers)} known, none open"
            )
            if opened:
                status.problems.append(f"circuit breakers: {len(opened)} open")
        except Exception as exc:  # noqa: BLE001
            status.problems.append(f"redis: {_why(exc)}")

    def _activity(
        self, session: Session, status: EngineStatus, now: dt.datetime, in_process: bool
    ) -> None:
        beats = list(
            session.scalars(select(WorkerHeartbeatRow).order_by(WorkerHeartbeatRow.worker))
        )
        stale = dt.timedelta(seconds=self.settings.heartbeat_stale_seconds)
        fresh = [b for b in beats if now - b.last_seen <= stale]
        status.workers = [
            f"{b.worker} last heartbeat {_ago(now - b.last_seen)} ago"
            + ("" if b in fresh else " (STALE)")
            for b in beats
        ] or ["in-process (embedded: no separate workers)" if in_process else "none seen"]
        if not in_process and not fresh:
            status.problems.append(f"workers: no heartbeat in the last {_ago(stale)}")
        due, oldest = session.execute(
            select(func.count(), func.min(ActionRow.approved_at)).where(*due_conditions(now))
        ).one()
        later = session.scalar(
            select(func.count()).where(ActionRow.state == S.APPROVED, ActionRow.not_before > now)
        )
        status.backlog = f"{due} approved action(s) due now"
        status.backlog += f", oldest approved {_ago(now - oldest)} ago" if due and oldest else ""
        status.backlog += f"; {later or 0} waiting for their notice period"
        for window, hours in (("last_hour", 1), ("last_day", 24)):
            setattr(
                status,
                window,
                _by_state(session, ActionRow.updated_at >= now - dt.timedelta(hours=hours)),
            )
        executed = _by_state(
            session,
            ActionRow.claimed_at >= now - dt.timedelta(hours=1),
            ActionRow.state.in_([S.SUCCEEDED, S.FAILED, S.ROLLED_BACK]),
        )
        total, failed = sum(executed.values()), executed.get(S.FAILED.value, 0)
        status.failure_rate = "n/a (no action executed)"
        if total:
            status.failure_rate = f"{failed / total:.0%} ({failed} of {total} executed failed)"
        if total and failed / total > FAILURE_RATE_ALERT:
            status.problems.append(f"failure rate: {failed} of {total} failed in the last hour")

    # -- P2: one failed action again ----------------------------------------------------------
    def retry_action(
        self, action_id: int | str, actor: str | None = None, *, dry_run: bool | None = None
    ) -> ActionOutcome:
        """Judge a failed action again on a fresh describe, then run it (dry-run by default)."""
        ident = _parse_id(action_id)
        dry_run = self.settings.dry_run if dry_run is None else dry_run
        ensure_schema()
        with session_scope() as session:
            row = session.get(ActionRow, ident)
            if row is None:
                raise LookupError(f"no action {ident}; {FIND_FAILED}")
            if row.state != S.FAILED:
                raise ValueError(f"action {ident} is {row.state}: only a failed one can be retried")
            echo(f"action {ident}: {row.action} {row.resource_id} ({row.policy_name})")
            echo(f"failed with: {row.error}")
            try:
                self.emergency.check("a retry")
            except EmergencyStopEngaged as exc:
                echo(f"not retried: {exc}")
                return ActionOutcome(ident, "stopped", str(exc))
            judgement = self._judge_now(session, row)
        echo(f"safety, on a fresh describe: {judgement.summary()}")
        if not judgement.allowed:
            echo("not retried: the action stays failed")
            return ActionOutcome(ident, "blocked", judgement.summary())
        if dry_run:
            echo("DRY-RUN: it would be retried and stays failed; FINOPS_DRY_RUN=false to retry")
            return ActionOutcome(ident, "would-execute", "dry-run: not retried")
        engine, who = self._engine(), actor or default_actor()
        if self.dispatcher.name == "in-process":
            outcome = engine.retry(ident, who)
        else:  # distributed: approved again, and queued for a worker like any other
            engine.reapprove(ident, who)
            run = self.dispatcher.run(engine, [ident], dry_run=False, triggered_by=who)
            queued = ident in run.batch and not run.stopped_by
            outcome = ActionOutcome(
                ident, "queued" if queued else "stopped", run.stopped_by or "queued for a worker"
            )
        echo(f"retried: {outcome.result} {outcome.detail}".rstrip())
        return outcome

    def _judge_now(self, session: Session, row: ActionRow) -> Judgement:
        ctx = ExecutionContext(self.settings, self._aws(), self.emergency, self.pack)
        op = operation_for(row.action, ResourceKind(row.kind))
        policy, op_ctx = ctx.policy(row.policy_name), ctx.op_context(row, refuse_changes)
        return self.safety.judge_before_execution(session, row, policy, op, op_ctx)[0]

    # -- P1: can a harmless action still go through? ------------------------------------------
    def test_safe_action(self) -> CheckReport:
        """Each step PASS or FAIL, printed as it completes. Never changes anything in AWS."""
        report = CheckReport()
        steps: dict[str, Callable[[], tuple[bool, str]]] = {
            "emergency stop": lambda: (not (s := self.emergency.state()).engaged, s.describe()),
            "database": self._step_database,
            "audit log": lambda: ((t := self.audit.test_logging()).startswith(AUDIT_OK), t),
            "safety self-test": self._step_safety,
            "policy pack": lambda: ((c := self.policies.check()).ok, c.lines[0 if c.ok else -1]),
            "dry-run": self._step_dry_run,
        }
        for name, step in steps.items():
            try:
                ok, detail = step()
            except Exception as exc:  # noqa: BLE001 - a crashed step is a failed step
                ok, detail = False, _why(exc)
            report.steps.append((name, ok, detail))
            echo(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
        echo(str(report).splitlines()[-1])
        return report

    def _step_database(self) -> tuple[bool, str]:
        check_database()
        ensure_schema()
        return True, f"{redacted(database_url())} answers; schema current"

    def _step_safety(self) -> tuple[bool, str]:
        selftest, status = self.safety.run_full_check(), self.safety.system_status()
        held = sum(1 for _, ok, _ in selftest.results if ok)
        active = "active" if status.active else "NOT ACTIVE"
        detail = [f"{held} of {len(selftest.results)} cases held; safety system {active}"]
        return selftest.passed and status.active, "; ".join(detail + status.problems)

    def _step_dry_run(self) -> tuple[bool, str]:
        now = self._clock()
        with session_scope() as session:
            row = session.scalars(
                select(ActionRow).where(*due_conditions(now)).order_by(ActionRow.id)
            ).first()
            picked = (row.id, f"{row.action} {row.resource_id}") if row else None
        if picked is None:
            verdict = judge(_synthetic_stop(), self.safety.config, now, before_execution=True)
            what = "no approved action due; a synthetic stop of an idle dev instance is judged"
            return verdict.allowed, f"{what}: {verdict.summary()}"
        ident, what = picked
        run = self._engine().execute([ident], dry_run=True, triggered_by="test_safe_action")
        head = f"DRY-RUN of action #{ident} ({what})"
        if run.stopped_by:  # a blast-radius stop is a verdict; the emergency stop is a failure
            return "emergency stop" not in run.stopped_by.lower(), f"{head}: {run.stopped_by}"
        if not run.outcomes:
            return False, f"{head}: not run (no longer due)"
        out = run.outcomes[0]
        # A block by a safety rule is the system working; fail-closed means it could not judge.
        ok = out.result == "would-execute" or Rule.FAIL_CLOSED.value not in out.detail
        return ok, f"{head}: {out.result} ({out.detail})"

    # -- one cycle, in-process ----------------------------------------------------------------
    def run_cycle(
        self,
        pack: PolicyPack | None = None,
        regions: list[str] | None = None,
        *,
        dry_run: bool | None = None,
    ) -> CycleSummary:
        """Scan, plan, execute. Dry-run unless told (or configured) otherwise."""
        summary = CycleSummary(self.settings.dry_run if dry_run is None else dry_run)
        ensure_schema()
        try:
            self.emergency.check("a cycle")
        except EmergencyStopEngaged as exc:
            summary.skipped = str(exc)
            return summary
        pack = pack or self.pack or self._effective_pack()
        summary.scan = self.scan(pack, regions)
        summary.plan = self.plan(pack)
        summary.run = self.execute(None, dry_run=summary.dry_run, pack=pack)
        return summary

    def scan(self, pack: PolicyPack, regions: list[str] | None = None) -> ScanOutcome:
        service = ScanService(self.settings, clients=self._aws(), now=self._clock)
        return service.run(pack=pack, regions=regions or self.settings.regions)

    def plan(self, pack: PolicyPack, requested_by: str = "automation") -> PlanResult:
        planner = ActionPlanner(
            settings=self._settings, safety=self.safety, audit=self.audit, clock=self._clock
        )
        with session_scope() as session:
            planner.expire_approvals(session)
            return planner.plan(session, pack, requested_by=requested_by)

    def execute(
        self,
        action_ids: list[int] | None = None,
        *,
        dry_run: bool | None = None,
        pack: PolicyPack | None = None,
        triggered_by: str = "automation",
    ) -> RunReport:
        """Approved actions that are due (or these ids), through the dispatcher."""
        dry_run = self.settings.dry_run if dry_run is None else dry_run
        engine = self._engine(pack)
        return self.dispatcher.run(engine, action_ids, dry_run=dry_run, triggered_by=triggered_by)

    def _effective_pack(self) -> PolicyPack:
        with session_scope() as session:
            return self.policies.effective_pack(session, self._clock())


def _by_state(session: Session, *where: ColumnElement[bool]) -> dict[str, int]:
    query = select(ActionRow.state, func.count()).where(*where).group_by(ActionRow.state)
    return {str(state): int(n) for state, n in session.execute(query)}


def _parse_id(action_id: int | str) -> int:
    text = str(action_id).strip().lstrip("#")
    if isinstance(action_id, bool) or not text.isdigit():
        raise ValueError(
            f"{action_id!r} is not an action id: replace ACTION_ID with the number of a failed "
            f"action ({FIND_FAILED})"
        )
    return int(text)


def _why(exc: BaseException) -> str:
    """One line: SQLAlchemy errors append the SQL and a link on the lines after."""
    return (describe_error(exc).strip().splitlines() or ["?"])[0]


def _synthetic_stop() -> ActionFacts:
    """An idle dev instance to stop: every rule should allow it."""
    kind, account, region, rid = ResourceKind.EC2_INSTANCE, "000000000000", "us-east-1", "i-0"
    instance = Resource(kind, rid, account, region, "running", tags={"env": "dev"})
    facts = (Truth.TRUE, Dependencies())
    return ActionFacts("stop", kind, account, region, rid, instance, *facts, True, mode="auto")


def _ago(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"
