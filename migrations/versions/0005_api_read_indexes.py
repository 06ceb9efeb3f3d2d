"""api read indexes: the inventory sorted by cost within a kind

`GET /api/v1/inventory?kind=ec2&sort=-monthly_cost` read every present resource of the kind
and sorted them for each page: 46 ms for the 50,000 instances of a 100,000-resource
inventory on PostgreSQL 15 (a parallel sequential scan and a top-N sort), whatever the
page. An index on (kind, monthly_cost, id) over the present resources (the list's default
filter, `gone_at IS NULL`) gives the page as a range of the index, forwards or backwards:
0.09 ms for the first page, 0.13 ms for a page after a cursor (a row comparison on
(monthly_cost, id) is an index condition).

The opportunities get no index: their default list (newest first) is the primary key's,
and every index there slows the evaluator's bulk writes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PRESENT = sa.text("gone_at IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_resources_kind_cost",
        "resources",
        ["kind", "monthly_cost", "id"],
        unique=False,
        postgresql_where=PRESENT,
        sqlite_where=PRESENT,
    )


def downgrade() -> None:
    op.drop_index("ix_resources_kind_cost", table_name="resources")
