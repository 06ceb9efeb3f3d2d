"""evaluation speed: opportunities rewritten in place

Every evaluation rewrites each opportunity it finds again (`last_seen` at least). With its
pages half full, PostgreSQL writes the new version beside the old one and adds no index
entry (a HOT update); the next evaluation prunes the old one in passing, with or without
autovacuum. Existing pages keep their rows; new ones are filled to half. SQLite has no such
setting.

Metric summaries get statistics on the combination (namespace, metric, statistic, days):
estimated column by column, the 4,000 summaries of one metric (of 94,000) came out as 1 row,
and the planner joined them to the inventory by a nested loop: 0.5 s for 4,000 load
balancers instead of 12 ms.

The index on `status` goes: a two-valued column no query needs it for (they filter by policy
too, which the unique index on (policy_name, resource_pk) serves, or read most of the table),
every insert paid for it, and a change of status (resolved, reopened) could not be HOT.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("opportunities", schema=None) as batch_op:
        batch_op.drop_index("ix_opportunities_status")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE opportunities SET (fillfactor = 50)")
        op.execute(
            "CREATE STATISTICS st_metric_summaries_spec (mcv)"
            " ON namespace, metric, statistic, days FROM metric_summaries"
        )
        op.execute("ANALYZE metric_summaries")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS st_metric_summaries_spec")
        op.execute("ALTER TABLE opportunities RESET (fillfactor)")
    with op.batch_alter_table("opportunities", schema=None) as batch_op:
        batch_op.create_index("ix_opportunities_status", ["status"], unique=False)
