"""The tables: everything the system keeps, in SQLAlchemy 2 `Mapped[...]` style.

Migrations in migrations/versions create these; a test checks the two never drift apart.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, mapped_column

from backend.core.types import JsonDoc, UtcDateTime, utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UtcDateTime, dict[str, Any]: JsonDoc}


# PostgreSQL's expressions: the schema comes from the migrations, and SQLite's (0012) are its
# own, computed on read and never used by its evaluator.
def _tag(key: str) -> Computed:
    return Computed(f"tags ->> '{key}'", persisted=True)


def _json_string(path: str) -> Computed:
    """The attribute's text when it is a JSON string, else NULL: what a string leaf reads."""
    return Computed(
        f"CASE WHEN jsonb_typeof(attributes #> '{{{path}}}') = 'string' "
        f"THEN attributes #>> '{{{path}}}' END",
        persisted=True,
    )


class ResourceRow(Base):
    """The inventory: one row per (account, region, kind, AWS id), kept after it is gone."""

    __tablename__ = "resources"
    __mapper_args__ = {"eager_defaults": False}
    __table_args__ = (
        UniqueConstraint("account_id", "region", "kind", "resource_id", name="uq_resources_key"),
        Index("ix_resources_kind_state", "kind", "state"),
        # The inventory list sorted by cost within a kind, present resources only (its
        # default filter): a page is an index range, not a sort of the kind (migration 0005).
        Index(
            "ix_resources_kind_cost",
            "kind",
            "monthly_cost",
            "id",
            postgresql_where=text("gone_at IS NULL"),
            sqlite_where=text("gone_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(12))
    region: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(512))
    state: Mapped[str] = mapped_column(String(64))
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime | None]
    state_changed_at: Mapped[dt.datetime | None]
    monthly_cost: Mapped[float | None] = mapped_column(Float)
    cost_unknown: Mapped[str | None] = mapped_column(Text)
    first_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)
    gone_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    last_scan_id: Mapped[int | None] = mapped_column(ForeignKey("scan_runs.id"))
    # The default pack's hottest leaves, kept by the database as columns (migration 0012;
    # SQLite computes them on read and its evaluator does not use them). A leaf on a JSON
    # path copies the JSON value out of the row at each call, about 0.4 microseconds a leaf
    # a row; on a column it is a compare. Each holds exactly what its leaf reads.
    # Deferred, and not fetched after a write: Python reads tags and attributes themselves.
    tag_opt_out: Mapped[str | None] = mapped_column(Text, _tag("finops:opt-out"), deferred=True)
    tag_schedule: Mapped[str | None] = mapped_column(Text, _tag("finops:schedule"), deferred=True)
    tag_env: Mapped[str | None] = mapped_column(Text, _tag("env"), deferred=True)
    state_name: Mapped[str | None] = mapped_column(Text, _json_string("State,Name"), deferred=True)
    instance_type: Mapped[str | None] = mapped_column(
        Text, _json_string("InstanceType"), deferred=True
    )
    volume_type: Mapped[str | None] = mapped_column(Text, _json_string("VolumeType"), deferred=True)


class MetricSummaryRow(Base):
    """One CloudWatch series summarised over a window, per resource."""

    __tablename__ = "metric_summaries"
    __table_args__ = (
        UniqueConstraint(
            "resource_pk",
            "namespace",
            "metric",
            "statistic",
            "days",
            name="uq_metric_summaries_key",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    resource_pk: Mapped[int] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    namespace: Mapped[str] = mapped_column(String(64))
    metric: Mapped[str] = mapped_column(String(128))
    statistic: Mapped[str] = mapped_column(String(16))
    days: Mapped[int]
    value: Mapped[float | None] = mapped_column(Float)  # None: CloudWatch had no datapoints
    collected_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class InventoryPartRow(Base):
    """A part of the inventory (account, region, kind) that a scan has listed completely:
    until one has, "no volume with that id" says nothing about a snapshot (migration 0006)."""

    __tablename__ = "inventory_parts"

    account_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    region: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scan_runs.id"))
    completed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ScanRunRow(Base):
    """One inventory scan and what it could and could not see."""

    __tablename__ = "scan_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(
        String(16), default="running"
    )  # running|complete|partial|failed
    accounts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    regions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    failures: Mapped[dict[str, Any]] = mapped_column(default=dict)  # part -> error


class PolicyRow(Base):
    __tablename__ = "policies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(16))
    definition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    paused_until: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PolicyNumberRow(Base):
    """A number for each policy name ever evaluated, never reused: the low bits of its
    opportunities' ids (backend/core/opportunity_keys.py, migration 0011)."""

    __tablename__ = "policy_numbers"
    __table_args__ = (CheckConstraint("number BETWEEN 1 AND 8191", name="range"),)

    number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    policy_name: Mapped[str] = mapped_column(String(128), unique=True)


class OpportunityRow(Base):
    """A resource a policy selected; kept with its history (open, resolved, reopened).

    Its id is its key: resource_pk * 8192 + the policy's number, so that one B-tree keeps
    (policy, resource) unique (migration 0011)."""

    __tablename__ = "opportunities"
    __table_args__ = (
        # And 0004's insert trigger, as 0011 extends it, checks each id's number is its
        # policy's.
        CheckConstraint(
            "id / 8192 = resource_pk AND id % 8192 BETWEEN 1 AND 8191"
            " AND resource_pk < 1099511627776",
            name="id_is_key",
        ),
        # Half-full pages: each evaluation's rewrite of a row stays on its page, and no index
        # on a column an evaluation changes (status went): see migration 0002.
        {"postgresql_with": {"fillfactor": 50}},
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    policy_name: Mapped[str] = mapped_column(String(128))
    # A resource's id, kept so by triggers that check whole statements, not by a foreign
    # key's lookup per row (2.7 s of a first evaluation of 1M resources): see migration 0004.
    resource_pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    action: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    estimated_monthly_savings: Mapped[float | None] = mapped_column(Float)
    savings_unknown: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open|resolved
    first_found: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[dt.datetime | None]


@event.listens_for(OpportunityRow, "before_insert")
def _keyed(_mapper: Mapper[Any], connection: Connection, row: OpportunityRow) -> None:
    """An opportunity added through the ORM gets its key as the bulk writers give it."""
    if row.id is None:
        from backend.core.opportunity_keys import opportunity_id, policy_numbers

        number = policy_numbers(connection, [row.policy_name])[row.policy_name]
        row.id = opportunity_id(row.resource_pk, number)


class ActionRunRow(Base):
    """One batch of actions executed together (a cycle, an apply)."""

    __tablename__ = "action_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="running")
    triggered_by: Mapped[str] = mapped_column(String(128), default="system")
    dry_run: Mapped[bool] = mapped_column(Boolean, default=True)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ActionRow(Base):
    """A proposed or executed change, with everything needed to undo and explain it."""

    __tablename__ = "actions"
    __table_args__ = (Index("ix_actions_state_updated", "state", "updated_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    opportunity_id: Mapped[int | None] = mapped_column(ForeignKey("opportunities.id"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("action_runs.id"))
    policy_name: Mapped[str] = mapped_column(String(128), index=True)
    account_id: Mapped[str] = mapped_column(String(12))
    region: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(512))
    action: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    mode: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(24), default="proposed")
    risk: Mapped[str] = mapped_column(String(8), default="low")
    requested_by: Mapped[str] = mapped_column(String(128), default="system")
    approved_by: Mapped[str | None] = mapped_column(String(128))
    approved_at: Mapped[dt.datetime | None]
    approval_expires_at: Mapped[dt.datetime | None]
    not_before: Mapped[dt.datetime | None]  # end of the owner's grace period
    # A scheduled policy's run (Schedule.slot) and the end of its run window: never later.
    slot: Mapped[str | None] = mapped_column(String(96))
    not_after: Mapped[dt.datetime | None]
    safety_verdict: Mapped[dict[str, Any]] = mapped_column(default=dict)
    pre_state: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    post_state: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    backup_ref: Mapped[str | None] = mapped_column(Text)  # a whole configuration: 0007
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[dt.datetime | None]
    deadline: Mapped[dt.datetime | None]
    estimated_monthly_savings: Mapped[float | None] = mapped_column(Float)
    realized_monthly_savings: Mapped[float | None] = mapped_column(Float)
    rollback_of: Mapped[int | None] = mapped_column(ForeignKey("actions.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]


class AuditEventRow(Base):
    """Append-only, hash-chained: each row carries the hash of the one before it."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    event_type: Mapped[str] = mapped_column(String(64), index=True)
    subject_type: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[str] = mapped_column(String(512))
    outcome: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class EngineStateRow(Base):
    """A single row (id 1): the emergency stop, persisted so it survives restarts."""

    __tablename__ = "engine_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    emergency_stop: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text)
    engaged_by: Mapped[str | None] = mapped_column(String(128))
    engaged_at: Mapped[dt.datetime | None]
    released_by: Mapped[str | None] = mapped_column(String(128))
    released_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class NotificationRow(Base):
    """An outgoing message per channel: kept until sent, retried, its failures visible."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_status_next", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(8))
    category: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str | None] = mapped_column(String(256))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[dt.datetime | None]
    sent_at: Mapped[dt.datetime | None]


class OverrideRow(Base):
    """A manual override: exempt a resource, pause a policy or an account."""

    __tablename__ = "overrides"

    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))  # resource|policy|account
    target: Mapped[str] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None]


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # viewer|operator|approver|administrator
    password_hash: Mapped[str | None] = mapped_column(String(256))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiTokenRow(Base):
    """Tokens are stored as hashes only; the clear token is shown once, at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]


class WorkerHeartbeatRow(Base):
    __tablename__ = "worker_heartbeats"

    worker: Mapped[str] = mapped_column(String(256), primary_key=True)
    last_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class PolicyCycleRow(Base):
    """One scheduled (or requested) cycle of a policy: scan its parts, then plan.

    (policy, slot) is unique, so a cron slot starts once however many schedulers fire it
    (beat restarted, its schedule file deleted); the reconciler restarts a cycle whose scan
    parts were lost with a flushed broker.
    """

    __tablename__ = "policy_cycles"
    __table_args__ = (UniqueConstraint("policy_name", "slot", name="uq_policy_cycles_slot"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    policy_name: Mapped[str] = mapped_column(String(128))
    slot: Mapped[str] = mapped_column(String(64))  # the cron time, or "manual:<uuid>"
    state: Mapped[str] = mapped_column(String(16))  # scanning | planned | failed
    parts_total: Mapped[int] = mapped_column(Integer, default=0)
    parts_done: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class SchemaCompatibilityRow(Base):
    """The oldest code revision that may run on the schema (one row, written with every
    migration, see migration_env.oldest_code_recorder): a release that does not know the
    database's revision starts if it is at least that one."""

    __tablename__ = "schema_compatibility"

    revision: Mapped[str] = mapped_column(String(64), primary_key=True)
    oldest_code: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[dt.datetime] = mapped_column()
