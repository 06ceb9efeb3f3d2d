"""backup_ref as text: a load balancer's saved configuration is longer than 512 characters

A load balancer's delete keeps its whole configuration (listeners, rules, target groups,
attributes) as the backup, `config:{json}`. It did not fit `actions.backup_ref`,
VARCHAR(512): on PostgreSQL the step that records the backup failed ("value too long"),
so every load balancer delete failed there (SQLite does not enforce the length).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("actions") as batch:
        batch.alter_column(
            "backup_ref", existing_type=sa.String(length=512), type_=sa.Text(), nullable=True
        )


def downgrade() -> None:
    # Cutting a saved configuration would leave a backup that cannot rebuild anything.
    long_ones = [
        row[0]
        for row in op.get_bind().execute(
            sa.text("SELECT id FROM actions WHERE length(backup_ref) > 512 ORDER BY id")
        )
    ]
    if long_ones:
        raise RuntimeError(
            f"cannot downgrade below 0007: actions {long_ones[:20]} keep backups longer than "
            "512 characters (load balancer configurations) that 0006 cannot hold"
        )
    with op.batch_alter_table("actions") as batch:
        batch.alter_column(
            "backup_ref", existing_type=sa.Text(), type_=sa.String(length=512), nullable=True
        )
