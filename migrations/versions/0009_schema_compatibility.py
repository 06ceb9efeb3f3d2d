"""schema_compatibility: the oldest release that may run on this schema

A rollback of the image (or a pod of the previous release during a rolling update) met a
schema one revision newer than it knew and refused to start, even when that revision only
added what older code ignores. From this revision on, each migration says whether the code
of the revision before it still runs correctly on the schema it makes
(`older_code_compatible`), and every upgrade and downgrade records, here, the oldest code
revision that may run on the result (backend/core/migration_env.py). A release that does
not know the database's revision starts when it is at least that old one.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None
# A new table that the code of 0008 never reads: it runs on this schema as it did.
older_code_compatible = True


def upgrade() -> None:
    op.create_table(
        "schema_compatibility",
        sa.Column("revision", sa.String(length=64), primary_key=True),
        sa.Column("oldest_code", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("schema_compatibility")
