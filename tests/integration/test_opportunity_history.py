"""Opportunities kept with history across scans: found, still open, resolved, per part."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from backend.config import get_settings
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import OpportunityRow, ResourceRow
from backend.core.scan_service import ScanService
from backend.domain.policy.loader import load_text
from tests.integration.aws_fleet import client

pytestmark = pytest.mark.moto_server

PACK = load_text(
    "policies:\n  - name: unattached\n    resource: ebs\n    filters: [unattached]\n"
    "    action: {type: delete, backup: true}\n",
    "history.yml",
)


def statuses() -> dict[str, str]:
    with session_scope() as session:
        rows = session.execute(
            select(ResourceRow.region, ResourceRow.resource_id, OpportunityRow.status).join(
                ResourceRow, ResourceRow.id == OpportunityRow.resource_pk
            )
        )
        return {f"{region}/{rid}": status for region, rid, status in rows}


def test_a_scan_of_one_region_resolves_nothing_in_another(moto_url: str, any_database: str) -> None:
    upgrade()
    east, west = (client(moto_url, "ec2", r) for r in ("us-east-1", "us-west-2"))
    v_east = east.create_volume(AvailabilityZone="us-east-1a", Size=5)["VolumeId"]
    v_west = west.create_volume(AvailabilityZone="us-west-2a", Size=5)["VolumeId"]
    service = ScanService(get_settings())
    service.run(pack=PACK, regions=["us-east-1", "us-west-2"])
    both = {f"us-east-1/{v_east}": "open", f"us-west-2/{v_west}": "open"}
    assert statuses() == both

    service.run(pack=PACK, regions=["us-west-2"])  # still open there; east not looked at
    assert statuses() == both

    west.delete_volume(VolumeId=v_west)
    service.run(pack=PACK, regions=["us-west-2"])  # gone: its opportunity is resolved
    assert statuses() == {f"us-east-1/{v_east}": "open", f"us-west-2/{v_west}": "resolved"}

    east.delete_volume(VolumeId=v_east)
    service.run(pack=PACK, regions=["us-east-1", "us-west-2"])
    assert set(statuses().values()) == {"resolved"}
