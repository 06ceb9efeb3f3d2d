"""Queries over the tables. Repositories add and query; the caller owns the transaction.

The runbook calls `ActionRepository().get_failed_actions(hours=24)` with no session: a
repository made without one opens a short read-only session per call.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, CursorResult, and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from backend.core.models import (
    ActionRow,
    InventoryPartRow,
    MetricSummaryRow,
    OpportunityRow,
    ResourceRow,
    ScanRunRow,
)
from backend.core.opportunity_keys import opportunity_id, policy_numbers
from backend.core.types import utcnow
from backend.core.upsert import rewrite_rows, upsert_rows
from backend.domain.lifecycle import ACTIVE, ActionState
from backend.domain.resources import MetricSpec, Resource, ResourceKind

T = TypeVar("T")
# The kinds whose complete listing makes a region's snapshot relations knowable.
RELATION_KINDS = frozenset({ResourceKind.EBS_VOLUME.value, ResourceKind.AMI.value})
PartKey = tuple[str, str, str]  # (account, region, kind)


# What a rescan refreshes on a resource it knows.
_RESCANNED = (
    "state",
    "tags",
    "attributes",
    "created_at",
    "state_changed_at",
    "monthly_cost",
    "cost_unknown",
    "last_seen",
    "gone_at",
    "last_scan_id",
)


class _Repository:
    def __init__(self, session: Session | None = None) -> None:
        self._session = session

    @contextmanager
    def _use(self) -> Iterator[Session]:
        if self._session is not None:
            yield self._session
            return
        from backend.core.database import session_scope

        with session_scope() as session:
            yield session


def lock_opportunities(session: Session) -> None:
    """One writer of opportunities at a time until commit, readers unhindered (PostgreSQL).

    Two writers' inserts cannot meet on the same key, nor one resolve the other's
    findings; and a concurrent delete of resources, whose trigger deletes their
    opportunities (migration 0004), waits for the commit and then sees what was written.
    Take it before writing any audit event in the same transaction (the audit chain has a
    lock of its own): with one order for everyone, two writers cannot deadlock.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("LOCK TABLE opportunities IN SHARE ROW EXCLUSIVE MODE"))


class ResourceRepository(_Repository):
    def upsert_many(
        self,
        resources: Iterable[Resource],
        *,
        scan_id: int,
        seen_at: dt.datetime,
        cost: Callable[[Resource], tuple[float | None, str | None]],
    ) -> int:
        rows = []
        for r in resources:
            monthly, unknown = cost(r)
            rows.append(
                {
                    "account_id": r.account_id,
                    "region": r.region,
                    "kind": r.kind.value,
                    "resource_id": r.resource_id,
                    "state": r.state,
                    "tags": dict(r.tags),
                    "attributes": dict(r.attributes),
                    "created_at": r.created_at,
                    "state_changed_at": r.state_changed_at,
                    "monthly_cost": monthly,
                    "cost_unknown": unknown,
                    "first_seen": seen_at,
                    "last_seen": seen_at,
                    "gone_at": None,
                    "last_scan_id": scan_id,
                }
            )
        with self._use() as session:
            rewrite_rows(
                session,
                ResourceRow,
                rows,
                key_columns=("account_id", "region", "kind", "resource_id"),
                update_columns=_RESCANNED,
            )
        return len(rows)

    def mark_gone(self, part: PartKey, *, scan_id: int, at: dt.datetime) -> int:
        """Resources of a part that this scan saw completely, but that it did not find."""
        account, region, kind = part
        with self._use() as session:
            result = cast(
                CursorResult[Any],
                session.execute(
                    update(ResourceRow)
                    .where(
                        ResourceRow.account_id == account,
                        ResourceRow.region == region,
                        ResourceRow.kind == kind,
                        ResourceRow.gone_at.is_(None),
                        or_(
                            ResourceRow.last_scan_id.is_(None), ResourceRow.last_scan_id != scan_id
                        ),
                    )
                    .values(gone_at=at)
                ),
            )
            return int(result.rowcount or 0)

    def mark_complete(self, parts: Iterable[PartKey], *, scan_id: int, at: dt.datetime) -> None:
        """Record the parts this scan listed completely (relations read them, 0006)."""
        rows = [
            {"account_id": a, "region": r, "kind": k, "scan_id": scan_id, "completed_at": at}
            for a, r, k in parts
        ]
        if rows:
            with self._use() as session:
                upsert_rows(
                    session,
                    InventoryPartRow,
                    rows,
                    conflict_columns=("account_id", "region", "kind"),
                    update_columns=("scan_id", "completed_at"),
                )

    def primary_keys(self, scan_id: int) -> dict[tuple[str, str, str, str], int]:
        with self._use() as session:
            rows = session.execute(
                select(
                    ResourceRow.id,
                    ResourceRow.account_id,
                    ResourceRow.region,
                    ResourceRow.kind,
                    ResourceRow.resource_id,
                ).where(ResourceRow.last_scan_id == scan_id)
            )
            return {(a, r, k, rid): pk for pk, a, r, k, rid in rows}

    def live(
        self,
        *,
        kinds: Sequence[str] = (),
        accounts: Sequence[str] = (),
        regions: Sequence[str] = (),
    ) -> list[Resource]:
        query = select(ResourceRow).where(ResourceRow.gone_at.is_(None))
        if kinds:
            query = query.where(ResourceRow.kind.in_(kinds))
        if accounts:
            query = query.where(ResourceRow.account_id.in_(accounts))
        if regions:
            query = query.where(ResourceRow.region.in_(regions))
        with self._use() as session:
            return [to_resource(row) for row in session.scalars(query)]

    def cost_summary(self) -> list[tuple[str, str, str, int, float, int]]:
        """(kind, account, region, count, monthly cost, count priced unknown) of live ones."""
        with self._use() as session:
            rows = session.execute(
                select(
                    ResourceRow.kind,
                    ResourceRow.account_id,
                    ResourceRow.region,
                    func.count(),
                    func.coalesce(func.sum(ResourceRow.monthly_cost), 0.0),
                    func.count(ResourceRow.cost_unknown),
                )
                .where(ResourceRow.gone_at.is_(None))
                .group_by(ResourceRow.kind, ResourceRow.account_id, ResourceRow.region)
                .order_by(ResourceRow.kind, ResourceRow.account_id, ResourceRow.region)
            )
            return [(k, a, r, int(n), float(c or 0.0), int(u)) for k, a, r, n, c, u in rows]


def to_resource(row: ResourceRow) -> Resource:
    return Resource(
        kind=ResourceKind(row.kind),
        resource_id=row.resource_id,
        account_id=row.account_id,
        region=row.region,
        state=row.state,
        tags=row.tags or {},
        attributes=row.attributes or {},
        created_at=row.created_at,
        state_changed_at=row.state_changed_at,
    )


class ScanRepository(_Repository):
    def start(self, *, accounts: Sequence[str], regions: Sequence[str]) -> ScanRunRow:
        with self._use() as session:
            row = ScanRunRow(accounts={"ids": list(accounts)}, regions={"names": list(regions)})
            session.add(row)
            session.flush()
            return row

    def latest(self) -> ScanRunRow | None:
        with self._use() as session:
            return session.scalars(select(ScanRunRow).order_by(ScanRunRow.id.desc())).first()


class MetricRepository(_Repository):
    def upsert_many(
        self, values: Iterable[tuple[int, MetricSpec, float | None]], *, at: dt.datetime
    ) -> None:
        rows = [
            {
                "resource_pk": pk,
                "namespace": s.namespace,
                "metric": s.metric,
                "statistic": s.statistic,
                "days": s.days,
                "value": v,
                "collected_at": at,
            }
            for pk, s, v in values
        ]
        with self._use() as session:
            rewrite_rows(
                session,
                MetricSummaryRow,
                rows,
                key_columns=("resource_pk", "namespace", "metric", "statistic", "days"),
                update_columns=("value", "collected_at"),
            )


class OpportunityRepository(_Repository):
    def record(
        self,
        found: Sequence[dict[str, Any]],
        *,
        policies: Sequence[str],
        at: dt.datetime,
        scan_id: int,
        undecided: Collection[tuple[str, int]] = (),
    ) -> tuple[int, int]:
        """Upsert what the policies found now; resolve their open ones not found again.

        Only opportunities on resources this scan saw (or found gone) are resolved: a part
        that failed to scan says nothing about its resources, and a (policy, resource pk)
        in `undecided` (its metrics or relations could not be read) is not resolved either.

        `found` rows hold policy_name, resource_pk, action, params, evidence, savings.
        Returns (open now, resolved now).
        """
        with self._use() as session:
            lock_opportunities(session)
            numbers = policy_numbers(session.connection(), [row["policy_name"] for row in found])
            rows = [
                {**row, "status": "open", "first_found": at, "last_seen": at, "resolved_at": None}
                | {"id": opportunity_id(row["resource_pk"], numbers[row["policy_name"]])}
                for row in found
            ]
            for i in range(0, len(rows), 2000):
                upsert_rows(
                    session,
                    OpportunityRow,
                    rows[i : i + 2000],
                    conflict_columns=("id",),
                    update_columns=(
                        "action",
                        "params",
                        "evidence",
                        "estimated_monthly_savings",
                        "savings_unknown",
                        "status",
                        "last_seen",
                        "resolved_at",
                    ),
                )
            stale = session.execute(
                select(
                    OpportunityRow.id, OpportunityRow.policy_name, OpportunityRow.resource_pk
                ).where(
                    OpportunityRow.policy_name.in_(policies),
                    OpportunityRow.status == "open",
                    OpportunityRow.last_seen < at,
                    # a scan of one region (or a worker's one part) says nothing of others
                    OpportunityRow.resource_pk.in_(
                        select(ResourceRow.id).where(
                            or_(ResourceRow.last_scan_id == scan_id, ResourceRow.gone_at == at)
                        )
                    ),
                )
            ).all()
            ids = [i for i, name, pk in stale if (name, pk) not in undecided]
            resolved = 0
            for i in range(0, len(ids), 2000):
                result = cast(
                    CursorResult[Any],
                    session.execute(
                        update(OpportunityRow)
                        .where(OpportunityRow.id.in_(ids[i : i + 2000]))
                        .values(status="resolved", resolved_at=at)
                    ),
                )
                resolved += int(result.rowcount or 0)
            return len(rows), resolved

    def open_summary(self) -> list[tuple[str, int, float]]:
        with self._use() as session:
            rows = session.execute(
                select(
                    OpportunityRow.policy_name,
                    func.count(),
                    func.coalesce(func.sum(OpportunityRow.estimated_monthly_savings), 0.0),
                )
                .where(OpportunityRow.status == "open")
                .group_by(OpportunityRow.policy_name)
                .order_by(OpportunityRow.policy_name)
            )
            return [(p, int(n), float(s or 0.0)) for p, n, s in rows]


class ActionRepository(_Repository):
    def get_failed_actions(self, hours: float = 24) -> list[dict[str, Any]]:
        """Actions that failed in the last `hours`, newest first; printed for the runbook."""
        from backend.core.runbook_output import echo

        if self._session is None:
            from backend.core.migrations import ensure_embedded_schema

            ensure_embedded_schema()
        since = utcnow() - dt.timedelta(hours=hours)
        with self._use() as session:
            rows = session.scalars(
                select(ActionRow)
                .where(and_(ActionRow.state == "failed", ActionRow.updated_at >= since))
                .order_by(ActionRow.updated_at.desc())
            )
            failed = [action_summary(row) for row in rows]
        echo(f"{len(failed)} failed action(s) in the last {hours:g}h")
        for a in failed:
            echo(
                f"  #{a['id']} {a['action']} {a['resource']} ({a['policy']}): {a['error']}"
                f"  -> retry: AutoRemediationEngine().retry_action({a['id']})"
            )
        return failed


def relations_inventoried(session: Session) -> set[tuple[str, str]]:
    """The (account, region) pairs whose volumes and AMIs a scan has listed completely:
    where "orphaned" and "backs-ami" can be known."""
    rows = session.execute(
        select(InventoryPartRow.account_id, InventoryPartRow.region, InventoryPartRow.kind)
    )
    kinds: dict[tuple[str, str], set[str]] = {}
    for account, region, kind in rows:
        kinds.setdefault((account, region), set()).add(kind)
    return {pair for pair, found in kinds.items() if found >= RELATION_KINDS}


def lock_runs(session: Session) -> None:
    """One run starting at a time until commit: each counts what the others admitted
    before it judges its blast radius. Take it first in the transaction."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("LOCK TABLE action_runs IN SHARE ROW EXCLUSIVE MODE"))
    else:
        sqlite_write_lock(session)


def sqlite_write_lock(session: Session) -> None:
    """SQLite's one write lock, taken now and held until commit (nothing on another
    database). A deferred transaction takes it at its first write, after its reads: two
    writers would both decide on what they read before either wrote. A write of no row
    takes it before anything is read."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("UPDATE action_runs SET id = id WHERE 0"))


def due_conditions(now: dt.datetime) -> tuple[ColumnElement[bool], ...]:
    """Approved, past its notice period, approval not expired, inside its scheduled run
    window if it has one: what a run may admit, and what an executor may claim (the claim
    asks again: a queued task may arrive late). The window is asked apart from the approval:
    a person's or a retry's approval must not outlive it either."""
    return (
        ActionRow.state == ActionState.APPROVED,
        ActionRow.not_before.is_(None) | (ActionRow.not_before <= now),
        ActionRow.approval_expires_at.is_(None) | (ActionRow.approval_expires_at > now),
        ActionRow.not_after.is_(None) | (ActionRow.not_after > now),
    )


def active_actions(session: Session) -> list[ActionRow]:
    """What is executing now, then what is approved to run next, each oldest first: what an
    emergency stop holds, and what the runbook lists."""
    return list(
        session.scalars(
            select(ActionRow)
            .where(ActionRow.state.in_(list(ACTIVE)))
            .order_by(ActionRow.state.desc(), ActionRow.id)
        )
    )


def action_summary(row: ActionRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "policy": row.policy_name,
        "action": row.action,
        "state": row.state,
        "resource": f"{row.account_id}/{row.region}/{row.kind}/{row.resource_id}",
        "error": row.error,
        "updated_at": row.updated_at.isoformat(),
    }
