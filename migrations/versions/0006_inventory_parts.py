"""inventory parts: which (account, region, kind) a scan has listed completely

A snapshot is orphaned when no volume with its VolumeId exists in its account and region,
and backs an AMI when an AMI lists it. The scan judged those only where it had listed the
region's volumes and AMIs completely; the evaluation over the stored inventory (plan, the
API) and the check just before execution read "no volume row" as "no volume", so a region
whose volumes were never listed (AccessDenied on DescribeVolumes) made every snapshot there
an orphan, to be deleted. Each complete part is now recorded, and the relations are unknown
where the volumes or the AMIs of a region have no complete listing.

Nothing is backfilled: which parts past scans completed is not known. Until the next scan,
orphaned and backs-ami select nothing (unknown), which is the safe side.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inventory_parts",
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("region", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scan_runs.id"], name=op.f("fk_inventory_parts_scan_id_scan_runs")
        ),
        sa.PrimaryKeyConstraint("account_id", "region", "kind", name=op.f("pk_inventory_parts")),
    )


def downgrade() -> None:
    op.drop_table("inventory_parts")
