"""Inventory against a real moto_server over HTTP: every kind, regions, an assumed role."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from backend.config import get_settings, reset_settings_cache
from backend.core.database import session_scope
from backend.core.migrations import upgrade
from backend.core.models import MetricSummaryRow, ResourceRow, ScanRunRow
from backend.core.scan_service import ScanService
from tests.integration.aws_fleet import (
    ROLE_NAME,
    SECOND_ACCOUNT,
    assumed_credentials,
    client,
    seed_region,
)

pytestmark = pytest.mark.moto_server
MOTO_ACCOUNT = "123456789012"


def scan(**kwargs: object):  # type: ignore[no-untyped-def]
    upgrade()
    return ScanService(get_settings()).run(**kwargs)  # type: ignore[arg-type]


def live_rows() -> list[ResourceRow]:
    with session_scope() as session:
        return list(session.scalars(select(ResourceRow).where(ResourceRow.gone_at.is_(None))))


def test_every_kind_in_two_regions_is_inventoried(moto_url: str, any_database: str) -> None:
    fleets = {r: seed_region(moto_url, r) for r in ("us-east-1", "eu-west-1")}
    outcome = scan(regions=["us-east-1", "eu-west-1"])
    assert outcome.status == "complete", outcome.discovery.failures
    rows = live_rows()
    for region, fleet in fleets.items():
        for kind, ids in fleet.ids.items():
            found = {r.resource_id for r in rows if r.region == region and r.kind == kind}
            assert found == set(ids), (region, kind)
    assert {r.account_id for r in rows} == {MOTO_ACCOUNT}
    stopped = [r for r in rows if r.kind == "ec2" and r.state == "stopped"]
    assert len(stopped) == 2 and all(r.state_changed_at is not None for r in stopped)
    lbs = {r.attributes["Type"]: r for r in rows if r.kind == "elb"}
    assert set(lbs) == {"application", "network"}
    assert lbs["application"].tags == {"env": "dev"}
    rds = next(r for r in rows if r.kind == "rds")
    assert rds.tags == {"env": "prod"} and rds.state == "available"
    eips = sorted(r.state for r in rows if r.kind == "elastic-ip")
    assert eips == ["associated", "associated", "unassociated", "unassociated"]


def test_costs_are_priced_and_unknowns_reported(moto_url: str, any_database: str) -> None:
    seed_region(moto_url, "us-east-1")
    outcome = scan(regions=["us-east-1"])
    rows = {r.resource_id: r for r in live_rows()}
    running = [r for r in rows.values() if r.kind == "ec2" and r.state == "running"]
    assert running and all(r.monthly_cost == pytest.approx(0.096 * 730) for r in running)
    stopped = [r for r in rows.values() if r.kind == "ec2" and r.state == "stopped"]
    assert all(r.monthly_cost == 0.0 for r in stopped)
    assert all(r.monthly_cost is not None or r.cost_unknown for r in rows.values())
    assert sum(c for _, c in outcome.costs if c) > 0


def test_utilization_summaries_are_kept(moto_url: str, any_database: str) -> None:
    fleet = seed_region(moto_url, "us-east-1")
    scan(regions=["us-east-1"])
    with session_scope() as session:
        got = {
            (row.resource_id, m.metric, m.statistic): m.value
            for m, row in session.execute(
                select(MetricSummaryRow, ResourceRow).join(
                    ResourceRow, ResourceRow.id == MetricSummaryRow.resource_pk
                )
            )
        }
    running = fleet.ids["ec2"][1:]
    assert got[(running[0], "CPUUtilization", "Average")] == pytest.approx(42.0)
    assert got[(running[1], "CPUUtilization", "Maximum")] == pytest.approx(82.0)
    rds_conns = got[("db-us-east-1", "DatabaseConnections", "Maximum")]
    assert rds_conns is None  # no datapoints is kept as unknown, not as zero


def test_second_account_by_assumed_role(
    moto_url: str, any_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = seed_region(moto_url, "us-east-1")
    theirs = seed_region(moto_url, "us-east-1", assumed_credentials(moto_url), instances=2)
    monkeypatch.setenv("FINOPS_ACCOUNTS", f"{MOTO_ACCOUNT},{SECOND_ACCOUNT}")
    monkeypatch.setenv("FINOPS_ROLE_NAME", ROLE_NAME)
    reset_settings_cache()
    outcome = scan(regions=["us-east-1"])
    assert outcome.status == "complete", outcome.discovery.failures
    rows = live_rows()
    by_account = {
        a: {r.resource_id for r in rows if r.account_id == a and r.kind == "ec2"}
        for a in (MOTO_ACCOUNT, SECOND_ACCOUNT)
    }
    assert by_account[MOTO_ACCOUNT] == set(own.ids["ec2"])
    assert by_account[SECOND_ACCOUNT] == set(theirs.ids["ec2"])


def test_vanished_resources_are_marked_gone_not_forgotten(moto_url: str, any_database: str) -> None:
    fleet = seed_region(moto_url, "us-east-1")
    scan(regions=["us-east-1"])
    ec2 = client(moto_url, "ec2", "us-east-1")
    released = fleet.ids["elastic-ip"][1]
    ec2.release_address(AllocationId=released)
    outcome = scan(regions=["us-east-1"])
    assert outcome.gone == 1
    with session_scope() as session:
        row = session.scalars(select(ResourceRow).where(ResourceRow.resource_id == released)).one()
        assert row.gone_at is not None
        scans = session.scalars(select(ScanRunRow).order_by(ScanRunRow.id)).all()
        assert [s.status for s in scans] == ["complete", "complete"]
