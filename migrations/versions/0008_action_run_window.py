"""actions.slot and actions.not_after: a scheduled policy's run and the end of its window

An off-hours stop planned at 19:00 stayed due for the whole approval TTL (24 h), so with
the workers down overnight it ran the next morning. An action of a scheduled policy now
records its run (`slot`) and the end of its run window (`not_after`); it is never claimed
after it. Existing rows get NULL: they keep the behaviour they were planned under.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("actions") as batch:
        batch.add_column(sa.Column("slot", sa.String(length=96), nullable=True))
        batch.add_column(sa.Column("not_after", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("actions") as batch:
        batch.drop_column("not_after")
        batch.drop_column("slot")
